"""Benchmarks of the whole system on the embedded stack: `python -m benchmarks.run`.

Not tests: nothing here gates CI on a time. See docs/benchmark.md.
"""
