"""Errors raised by the runtime: one base class, one subclass per concern."""


class RuntimeConfigError(ValueError):
    """Base class for every error the runtime raises about its inputs."""


class MeshError(RuntimeConfigError):
    """A mesh shape or a multi-host setting is inconsistent with the devices present."""


class ShardingError(RuntimeConfigError):
    """A logical axis annotation cannot be mapped onto the mesh."""


class CheckpointError(RuntimeConfigError):
    """A checkpoint directory is missing, incomplete, or does not match the state it restores into."""
