class VtempoError(Exception):
    """A problem the user can fix: printed as one line by the CLI, never as a traceback."""


class UsageError(VtempoError):
    """Bad arguments or options (exit code 2)."""
