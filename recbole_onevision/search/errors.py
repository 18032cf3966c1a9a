"""The error every bad query raises: the message names the field and what was expected."""


class SearchError(ValueError):
    """A query this run cannot answer; ``status`` is the HTTP status the service replies with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
