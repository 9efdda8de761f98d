"""How the trainer lays out its parameters: the policy, where the reference policy comes from, what trains.

The train state's ``params`` is one dict, so that ``runtime.train_state``'s static trainable mask (a predicate over
slash-joined leaf paths) decides what gets gradients and optimizer state:

* ``reference="batch"`` or ``"none"``: ``{"policy": W}``; reference log-probs come with the batch (the
  precomputed cache of ``bfpo.reference_cache``) or are not needed (ORPO, SimPO).
* ``reference="frozen"``: ``{"policy": W, "reference": W_ref}``; W_ref starts as a copy of W and is never
  trainable, so it has no optimizer state and no gradient.
* ``lora.rank`` > 0: ``{"base": W, "lora": {A, B}}``; only the adapters train, the policy is W + (alpha/r) A B
  (``bfpo.lora``), and ``reference="base"`` takes W alone as the reference: no second copy of the model.

Selective fine-tuning (the BFPO paper trains only ``down_proj``) is the ``trainable`` regex over the policy's
paths (``layers/mlp/down_proj/kernel``; empty or None: everything); it is ignored with LoRA, whose ``targets``
select the adapted kernels. Launchers embed ``ParamLayout`` as is (``--reference``, ``--trainable``, ``--lora.rank``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp

from bfpo.errors import BFPOError
from bfpo.lora import LoRAConfig, init_lora, merge_lora

REFERENCE_SOURCES = ("batch", "frozen", "base", "none")


@dataclass(frozen=True, kw_only=True)
class ParamLayout:
    """``reference``: where reference log-probs come from; ``trainable``: regex over policy parameter paths
    (empty or None: everything); ``lora``: train low-rank adapters instead of the weights (rank 0: off)."""

    reference: Literal["batch", "frozen", "base", "none"] = "batch"
    """Reference log-probs from a precomputed cache (batch), a frozen copy, the LoRA base weights, or none."""
    trainable: str | None = "down_proj"
    """Regex over parameter paths of what trains (the paper: down_proj only); empty: everything."""
    lora: LoRAConfig = LoRAConfig()
    """Low-rank adapters (``--lora.rank 8``); the default rank 0 trains the ``trainable`` weights instead."""

    @property
    def uses_lora(self) -> bool:
        return self.lora.enabled

    def __post_init__(self):
        if self.reference not in REFERENCE_SOURCES:
            raise BFPOError(f"ParamLayout.reference={self.reference!r}: expected one of {REFERENCE_SOURCES}")
        if self.trainable:
            try:
                re.compile(self.trainable)
            except re.error as e:
                raise BFPOError(f"ParamLayout.trainable={self.trainable!r}: not a regular expression ({e})") from e
        if not isinstance(self.lora, LoRAConfig):
            raise BFPOError(f"ParamLayout.lora={self.lora!r}: expected a LoRAConfig (rank 0: no adapters)")
        if self.reference == "base" and not self.uses_lora:
            raise BFPOError("ParamLayout.reference='base' takes the base weights under LoRA adapters as the "
                            "reference: give ParamLayout.lora a rank, or use reference='frozen' for a frozen copy")
        if self.reference == "frozen" and self.uses_lora:
            raise BFPOError("ParamLayout.reference='frozen' with LoRA keeps a needless second copy of the model: "
                            "use reference='base' (the weights with the adapters off)")


def build_params(layout: ParamLayout, model_params: Any, seed: int = 0) -> dict:
    """The train-state parameter dict around a model's ``nnx.Param`` state (traceable: jit it to place it)."""
    if layout.uses_lora:
        return {"base": model_params, "lora": init_lora(model_params, layout.lora, seed)}
    if layout.reference == "frozen":
        # A distinct buffer, so that donating the state never donates one array twice.
        return {"policy": model_params, "reference": jax.tree.map(jnp.copy, model_params)}
    return {"policy": model_params}


def policy_params(layout: ParamLayout, params: dict) -> Any:
    """The policy's ``nnx.Param`` state (adapters merged in under LoRA)."""
    if layout.uses_lora:
        return merge_lora(params["base"], params["lora"], layout.lora)
    return params["policy"]


def reference_params(layout: ParamLayout, params: dict) -> Any | None:
    """The reference model's parameter state, or None when the reference comes with the batch (or is unused)."""
    if layout.reference == "frozen":
        return params["reference"]
    if layout.reference == "base":
        return params["base"]
    return None


def trainable_predicate(layout: ParamLayout) -> Callable[[str], bool]:
    """Which leaf paths of ``build_params``' dict train (for ``runtime.train_state``)."""
    if layout.uses_lora:
        return lambda path: path.startswith("lora/")
    pattern = re.compile(layout.trainable) if layout.trainable else None
    prefix = "policy/"
    # The regex sees the model's own paths, as in ``bfpo.model`` (``layers/mlp/down_proj/kernel``).
    return lambda path: path.startswith(prefix) and (pattern is None or bool(pattern.search(path[len(prefix):])))
