"""The one exception type for data problems, so the CLI can show a clean message."""


class DataError(ValueError):
    """A data setting or data file that cannot be used; the message says what to change."""
