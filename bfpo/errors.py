"""Errors raised by the BFPO package: one base class, one subclass per concern.

Every message names the file, tensor, record or field at fault and what was expected.
"""


class BFPOError(ValueError):
    """Base class of every error this package raises about its inputs."""


class ModelError(BFPOError):
    """A model config, checkpoint file or tensor does not match what the model expects."""


class DataError(BFPOError):
    """A record, a tokenizer input or a batch does not have the expected fields, types or shapes."""


class ConfigError(BFPOError):
    """A config field is out of range or inconsistent with another (the message names the field)."""
