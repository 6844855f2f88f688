"""The security tests drive a whole running system, as the end-to-end tests do."""

from tests.e2e.conftest import pathway, providers, system

__all__ = ["pathway", "providers", "system"]
