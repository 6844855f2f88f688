"""The `pathway` command line and the embedded stack it runs (also used by the tests)."""
