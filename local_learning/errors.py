"""The one error type of ``local_learning``: every bad input raises a ``ConfigError`` naming the field or file."""


class ConfigError(ValueError):
    """A configuration, partition, model input or data directory is not what this package expects."""


class DataError(ConfigError):
    """A data directory, archive or array does not hold what the loader expects (the message names it)."""
