"""The compiled chain as a Flax NNX module: the paper's linear-RNN model with (gated) ReLU MLPs.

Each state layer is a linear RNN s_t = A s_{t-1} + W h_t + b with identity readout, the position-wise layers
are Linear + ReLU or Linear + product (the ``Multiplicative`` gate), and a final Linear reads out. The
weights are ``nnx.Param``s annotated with logical axes (``features``/``state``, replicated by default), so they
can be perturbed or fine-tuned; the batch axis of the activations is constrained to ``batch`` (sharded over the
mesh's data axes under ``runtime.sharding.activate``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recurrent.chain import Chain
from recurrent.scan import check_dtype, run_chain
from runtime.sharding import constrain

_AXES = {
    "weight": ("features", "features"),
    "bias": ("features",),
    "A": ("state", "state"),
    "init": ("state",),
}


class ChainLayer(nnx.Module):
    def __init__(self, arrays: dict[str, np.ndarray], dtype):
        for name, value in arrays.items():
            setattr(self, name, nnx.Param(jnp.asarray(value, dtype), logical_axes=_AXES[name]))

    def params(self) -> dict[str, jax.Array]:
        return {k: getattr(self, k)[...] for k in _AXES if hasattr(self, k)}


class LinearRNN(nnx.Module):
    """Runs a compiled chain on tokens (B, T, D) -> (B, T, O) in ``dtype``; ``associative`` picks the scan."""

    def __init__(self, chain: Chain, *, dtype=jnp.float32, associative: bool = False):
        check_dtype(dtype)
        self.kinds = tuple(layer.kind for layer in chain.layers)
        self.associative = associative
        self.layers = nnx.List([ChainLayer(layer.arrays(), dtype) for layer in chain.layers])
        self.readout = ChainLayer({"weight": chain.readout_weight, "bias": chain.readout_bias}, dtype)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        params = {
            "layers": [layer.params() for layer in self.layers],
            "readout_weight": self.readout.weight[...],
            "readout_bias": self.readout.bias[...],
        }
        x_BxTxD = constrain(jnp.asarray(x_BxTxD, params["readout_weight"].dtype), ("batch", "seq", None))
        y = run_chain(params, self.kinds, x_BxTxD, associative=self.associative)
        return constrain(y, ("batch", "seq", None))
