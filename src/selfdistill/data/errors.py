"""The data layer's error type."""


class DataError(RuntimeError):
    """The dataset is missing, corrupt or inconsistent, or its split settings are impossible; the message says
    what to do."""
