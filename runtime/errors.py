"""Errors raised by the runtime: one base class, one subclass per concern."""


class RuntimeConfigError(ValueError):
    """Base class for every error the runtime raises about its inputs."""


class MeshError(RuntimeConfigError):
    """A mesh shape or a multi-host setting is inconsistent with the devices present."""


class ShardingError(RuntimeConfigError):
    """A logical axis annotation cannot be mapped onto the mesh."""


class CheckpointError(RuntimeConfigError):
    """A checkpoint directory is missing, incomplete, or does not match the state it restores into."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read back as written: a data file truncated or altered (its arrays do not
    match the content hashes recorded when it was saved), its metadata unreadable, or its arrays not the shape of
    the state being restored."""
