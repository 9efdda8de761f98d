"""The one place that knows about devices: meshes, sharding, the train state, checkpoints and exact metrics."""

from runtime.errors import CheckpointError, MeshError, RuntimeConfigError, ShardingError
from runtime.mesh import MESH_AXES, DistributedConfig, MeshConfig, initialize_distributed, make_mesh
from runtime.metrics import Metric

__all__ = [
    "MESH_AXES",
    "CheckpointError",
    "DistributedConfig",
    "MeshConfig",
    "MeshError",
    "Metric",
    "RuntimeConfigError",
    "ShardingError",
    "initialize_distributed",
    "make_mesh",
]
