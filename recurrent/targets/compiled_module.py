"""A Flax module around a target's pure run function and its parameter tree.

Each target (Elman, LSTM, GRU) has a pure ``run(params, x_BxTxD)`` over a nested dict of arrays. This module
holds that tree's leaves as ``nnx.Param`` variables named by their key paths (``layers/0/kernel_i/i``), so the
weights can be inspected, fine-tuned or perturbed with the usual NNX tools, and rebuilds the tree on call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from runtime.tree_paths import path_str


def scan_tokens(layer_step: Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]], layers: list, carry0: list,
                x_TxBxD: jax.Array) -> jax.Array:
    """Hidden outputs (T, B, W) of a stack run token-major: one ``lax.scan`` over the tokens whose body passes the
    token through every layer, ``layer_step(layer_params, carry, u) -> (carry, u)`` (Mamba and Hawk blocks, whose
    per-layer carries are a conv window and a diagonal state)."""

    def step(carry, u_BxD):
        new = []
        for p, c in zip(layers, carry):
            c, u_BxD = layer_step(p, c, u_BxD)
            new.append(c)
        return new, u_BxD

    return jax.lax.scan(step, carry0, x_TxBxD)[1]


class CompiledRNN(nnx.Module):
    """Runs ``run(params, x)`` with ``params`` held as named ``nnx.Param`` leaves."""

    def __init__(self, params: Any, run: Callable[[Any, jax.Array], jax.Array]):
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        self.names = tuple(path_str(path) for path, _ in flat)
        self.treedef = treedef
        self.run = run
        self.weights = nnx.Dict({name: nnx.Param(leaf) for name, (_, leaf) in zip(self.names, flat)})

    def params(self) -> Any:
        return jax.tree_util.tree_unflatten(self.treedef, [self.weights[n][...] for n in self.names])

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        return self.run(self.params(), x_BxTxD)
