"""The test configuration, set before JAX is imported anywhere.

* 8 simulated CPU devices;
* ``constrain`` outside an active mesh raises (``RUNTIME_STRICT_SHARDING``), so a step that forgot its mesh fails
  here rather than running replicated on the accelerators;
* implicit rank promotion raises, so a broadcast has to be written out where it is meant.

A test that runs model code on one device on purpose (a kernel against the reference kernel, the LM against
transformers) says so with ``@pytest.mark.unsharded`` or a module's ``pytestmark``; it then runs under
``runtime.sharding.unsharded()``, module-scoped fixtures included.
"""

import contextlib
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["RUNTIME_STRICT_SHARDING"] = "1"
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"  # read by JAX at import, also in launcher subprocesses

import jax  # noqa: E402
import pytest  # noqa: E402

assert jax.config.jax_numpy_rank_promotion == "raise"


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    assert jax.device_count() == 8, f"tests need 8 simulated CPU devices, got {jax.devices()}"


def _one_device(request):
    from runtime import sharding

    marked = request.node.get_closest_marker("unsharded") is not None
    return sharding.unsharded() if marked else contextlib.nullcontext()


@pytest.fixture(scope="module", autouse=True)
def unsharded_module(request):
    with _one_device(request):
        yield


@pytest.fixture(autouse=True)
def unsharded_test(request):
    with _one_device(request):
        yield
