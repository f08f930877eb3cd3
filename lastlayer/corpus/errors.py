"""The one error of the corpus readers: :class:`DataError`, whose message says how to fix it."""


class DataError(ValueError):
    """A corpus file cannot be read as asked; the message says how to fix it."""
