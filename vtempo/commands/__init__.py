"""CLI commands. Each module has `register(app)`; shared helpers live in `common`."""
