"""The one exception type that means "the user gave bad input" (exit code 2, one line, no traceback)."""


class BadInput(Exception):
    """Raised with a one-line, actionable message; the CLI prints it and exits with 2."""


class PlatformUnsupported(BadInput):
    """The request needs another platform (Core ML prediction and compiling need macOS)."""
