"""The model's three backend-specific operations behind one switch, ``ExecutionConfig.kernels``:

* ``dense(x, w, n, dtype)``: the linear map over the last ``n`` axes of x;
* ``attention(q, k, v, mask, execution)``: grouped-query softmax attention under an ``AttentionMask``;
* ``logprob_sums(h, w, targets, weights, chunk, vocab_major)``: sum_t w_t log softmax(h_t W)[x_t] per row.

Kernel families (one module each): ``reference`` (the formulas, automatic differentiation: the definition every
other kernel is tested against), ``xla_cpu`` (hand-written backward passes in XLA:CPU's fast product forms),
``gpu`` (cuDNN flash attention), ``tpu`` (Pallas splash attention). ``auto`` picks by the platform the program
runs on: the devices of the mesh set by ``runtime.sharding.activate`` (so a program compiled for a TPU pod that
is not attached gets the TPU kernels), else JAX's default backend. Asking for a kernel the platform cannot run
is a ``ModelError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import jax

from bfpo.errors import ModelError
from bfpo.model.execution import KERNEL_FAMILIES as KERNELS
from bfpo.model.kernels.mask import AttentionMask
from runtime import sharding as sharding_lib

__all__ = ["AttentionMask", "KERNELS", "platform", "select"]

AUTO = {"cpu": "xla_cpu", "gpu": "gpu", "tpu": "tpu"}
# Kernels that need one platform (the others are plain XLA and run anywhere).
NEEDS = {"gpu": "gpu", "tpu": "tpu"}


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform of the active mesh's devices, else of JAX's default backend."""
    mesh = sharding_lib.active_mesh()
    name = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return "gpu" if name in ("cuda", "rocm") else name


def resolve(name: str) -> str:
    """The kernel family ``name`` means here (``auto`` resolved); a clear error when it cannot run here."""
    if name not in KERNELS:
        raise ModelError(f"ExecutionConfig.kernels={name!r}: expected one of {', '.join(KERNELS)}")
    here = platform()
    chosen = AUTO.get(here, "reference") if name == "auto" else name
    if chosen in NEEDS and NEEDS[chosen] != here and not _interpreted(chosen):
        raise ModelError(f"ExecutionConfig.kernels={name!r}: the {chosen} kernels need a {NEEDS[chosen].upper()} "
                         f"backend, but this program runs on {here}; use 'auto', 'reference' or 'xla_cpu'")
    return chosen


def _interpreted(name: str) -> bool:
    if name != "tpu":
        return False
    from bfpo.model.kernels import tpu

    return tpu.interpreting()


def select(name: str) -> ModuleType:
    """The kernel module (``dense``, ``attention``, ``logprob_sums``) for ``ExecutionConfig.kernels``."""
    return importlib.import_module(f"{__name__}.{resolve(name)}")
