"""The reporting service with a shortened consumer fetch wait (see benchmarks.tuned)."""

from benchmarks.tuned import run

run("reporting")
