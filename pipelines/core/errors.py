"""The one error type for bad input: the CLI prints its message on one line and exits non-zero."""


class DataError(Exception):
    """Bad or missing input data. The message names the file, and the row and field where known."""

    exit_code = 2

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details  # printed as JSON on stdout before the error line, when given
