"""Low-rank adapters (LoRA) on the causal LM's projection kernels, merged into the weights by a pure function.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022), eq. 3: a frozen weight W [in, out]
is adapted as

    W_eff = W + (alpha / r) A B,      A [in, r],  B [r, out],  B = 0 at initialisation,

so the adapted model starts exactly at the base model, and with the adapters off (W alone) the base model is the
reference policy of a DPO-style objective without a second copy of the weights. The kernels of
``bfpo.model.llama`` are laid out [L, *in, *out] with all layers stacked along a leading ``layers`` axis, so each
adapter is stacked too: A [L, *in, r], B [L, r, *out]; ``in`` is one axis except for ``o_proj`` (heads,
head_dim), and ``out`` is the rest. Adapters are ``nnx.Param`` leaves carrying the logical axes of the dimensions
they share with W (the rank axis is replicated), so they shard through ``runtime.sharding`` like W does.

The merge materialises W_eff for every targeted kernel inside the step (one transient copy of the targeted
weights, not of the whole model); gradients reach A and B through it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bfpo.errors import ModelError
from runtime.sharding import METADATA_KEY
from runtime.train_state import leaf_paths

# Input rank of a kernel [L, *in, *out] by projection name; every other projection maps one input axis.
INPUT_RANK = {"o_proj": 2}
# Leaves that are linear maps: the stacked projection kernels and the untied output head.
_KERNEL_NAMES = ("kernel", "lm_head")


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """``targets``: regex (``re.search``) over parameter paths selecting the adapted kernels (the paper's
    selective fine-tuning trains ``down_proj``); ``rank`` r (0: no adapters, the weights train themselves);
    ``alpha`` with scale alpha / r."""

    targets: str = "down_proj"
    rank: int = 0
    """Adapter rank (0: LoRA off)."""
    alpha: float = 16.0

    def __post_init__(self):
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ModelError(f"LoRAConfig.targets={self.targets!r}: not a regular expression ({e})") from e
        if not (isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 0):
            raise ModelError(f"LoRAConfig.rank={self.rank!r}: expected an integer, at least 1 (0: no adapters)")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ModelError(f"LoRAConfig.alpha={self.alpha!r}: expected a finite number greater than 0")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class _Target:
    path: str
    stacked: bool  # leading ``layers`` axis
    in_rank: int
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]


def _variables(params: Any) -> list[Any]:
    return jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def lora_targets(params: Any, cfg: LoRAConfig) -> list[_Target]:
    """The kernels of ``params`` (an ``nnx.State`` of ``nnx.Param``, abstract or concrete) that ``cfg`` adapts."""
    if not cfg.enabled:
        raise ModelError("LoRAConfig.rank=0: adapters are off; give a rank of at least 1")
    pattern = re.compile(cfg.targets)
    paths = leaf_paths(params)
    out = []
    for path, var in zip(paths, _variables(params)):
        name = path.split("/")[-1]
        if name not in _KERNEL_NAMES or not pattern.search(path):
            continue
        axes = tuple(var.get_metadata().get(METADATA_KEY) or (None,) * len(var.shape))
        stacked = axes[0] == "layers"
        projection = path.split("/")[-2] if name == "kernel" else name
        in_rank = INPUT_RANK.get(projection, 1)
        if len(var.shape) - int(stacked) <= in_rank:
            raise ModelError(f"LoRA target {path} has shape {tuple(var.shape)}: expected [*(L,), *in, *out] with "
                             f"{in_rank} input axis/axes and at least one output axis")
        out.append(_Target(path, stacked, in_rank, tuple(var.shape), axes))
    if not out:
        kernels = [p for p in paths if p.split("/")[-1] in _KERNEL_NAMES]
        raise ModelError(f"LoRAConfig.targets={cfg.targets!r} matches no projection kernel; kernels are {kernels}")
    return out


def _set(tree: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def init_lora(params: Any, cfg: LoRAConfig, seed: int = 0) -> dict:
    """Adapters for ``params``: a nested dict mirroring the kernel paths, each kernel holding {"a", "b"}.

    A ~ N(0, 1 / fan_in) so that A^T x keeps the scale of x; B = 0 so the adapted model equals the base model.
    Traceable (build it under jit to place it sharded).
    """
    adapters: dict = {}
    key = jax.random.PRNGKey(seed)
    for index, t in enumerate(lora_targets(params, cfg)):
        lead = 1 if t.stacked else 0
        in_shape = t.shape[lead:lead + t.in_rank]
        out_shape = t.shape[lead + t.in_rank:]
        lead_shape, lead_axes = t.shape[:lead], t.axes[:lead]
        fan_in = math.prod(in_shape)
        a = jax.random.normal(jax.random.fold_in(key, index), lead_shape + in_shape + (cfg.rank,), jnp.float32)
        a = a / math.sqrt(fan_in)
        b = jnp.zeros(lead_shape + (cfg.rank,) + out_shape, jnp.float32)
        in_axes, out_axes = t.axes[lead:lead + t.in_rank], t.axes[lead + t.in_rank:]
        _set(adapters, t.path, {
            "a": nnx.Param(a, **{METADATA_KEY: lead_axes + in_axes + (None,)}),
            "b": nnx.Param(b, **{METADATA_KEY: lead_axes + (None,) + out_axes}),
        })
    return adapters


def _lookup(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _value(x):
    return x.get_value() if isinstance(x, nnx.Variable) else x


def lora_delta(a: jax.Array, b: jax.Array, *, stacked: bool, in_rank: int, scale: float) -> jax.Array:
    """scale * A B contracted over the rank axis: [*(L,), *in, *out], in float32."""
    letters = "abcdefgh"
    lead = "l" if stacked else ""
    ins = letters[:in_rank]
    outs = letters[in_rank:in_rank + b.ndim - 1 - len(lead)]
    spec = f"{lead}{ins}r,{lead}r{outs}->{lead}{ins}{outs}"
    return scale * jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))


def merge_lora(params: Any, adapters: dict, cfg: LoRAConfig) -> Any:
    """The base parameter state with every targeted kernel replaced by W + (alpha / r) A B (in W's dtype).

    Pure: used inside the train step before the forward, and outside it to export the adapted model.
    """
    targets = {t.path: t for t in lora_targets(params, cfg)}
    paths = leaf_paths(params)
    leaves, treedef = jax.tree.flatten(params)
    merged = []
    for path, w in zip(paths, leaves):
        t = targets.get(path)
        if t is None:
            merged.append(w)
            continue
        pair = _lookup(adapters, path)
        delta = lora_delta(_value(pair["a"]), _value(pair["b"]), stacked=t.stacked, in_rank=t.in_rank,
                           scale=cfg.scale)
        merged.append((w.astype(jnp.float32) + delta).astype(w.dtype))
    return treedef.unflatten(merged)
