"""CLI commands. Each module has `register(app)`; shared helpers live in `common`.

A command imports the library modules that load torch or the YAML registry inside its function, so
`vtempo --help` loads neither (tests/test_startup.py)."""
