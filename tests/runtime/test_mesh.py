import jax
import pytest

from runtime import MeshConfig, MeshError, make_mesh
from runtime.mesh import DistributedConfig, resolve_axis_sizes


def test_rest_axis_takes_remaining_devices():
    assert resolve_axis_sizes({"fsdp": -1, "tensor": 2}, 8) == {"data": 1, "fsdp": 4, "tensor": 2}


def test_make_mesh_shapes_and_axis_names():
    mesh = make_mesh({"data": 2, "fsdp": -1})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert make_mesh(MeshConfig()).shape["data"] == 8
    sub = make_mesh({"data": -1}, devices=jax.devices()[:2])
    assert sub.devices.size == 2


@pytest.mark.parametrize(
    "axes, message",
    [
        ({"data": -1, "fsdp": -1}, "only one mesh axis may be -1"),
        ({"data": 3}, "use 3 devices, but there are 8"),
        ({"data": 3, "fsdp": -1}, "need a multiple of 3 devices"),
        ({"pipeline": 2}, "unknown mesh axis name"),
        ({"data": 0}, "has size 0"),
    ],
)
def test_mesh_errors(axes, message):
    with pytest.raises(MeshError, match=message):
        make_mesh(axes)


def test_config_errors():
    with pytest.raises(MeshError, match="MeshConfig.fsdp=0"):
        MeshConfig(fsdp=0)
    with pytest.raises(MeshError, match="coordinator_address is required"):
        DistributedConfig(num_processes=2)
    with pytest.raises(MeshError, match="process_id=2"):
        DistributedConfig(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2)
