"""FLOPs of a traced program, counted on its jaxpr with every loop counted as many times as it runs.

XLA's ``cost_analysis()`` counts the body of a while loop once, so a scan over 32 layers, over query chunks or
over vocabulary chunks is undercounted by its trip count. Here the jaxpr of the whole step is walked instead:

    flops(dot_general)          = 2 * prod(batch dims) * prod(lhs free dims) * prod(rhs free dims) * prod(contracted)
    flops(conv_general_dilated) = 2 * prod(output dims) * (input features / feature groups) * prod(kernel window)
    flops(scan)                 = length * flops(body)
    flops(cond)                 = max over branches
    flops(shard_map)            = flops(per-shard body) * number of shards
    flops(pallas_call)          = flops(kernel body) * number of grid steps (a block-sparse kernel such as
                                  splash attention skips masked blocks, so this is its dense upper bound)
    flops(cuDNN attention)      = 2 products (QK^T, PV) forward and 5 backward (QK^T recomputed, dV, dP, dQ, dK)
                                  of 2 * B * N * T * S * H each, dense (a causal mask skips about half)
    flops(any other call)       = flops of the jaxprs it holds (jit, remat, custom_jvp/vjp primal, ...)

Only matrix products and convolutions are counted (the work that runs on the matrix units and that peak FLOP/s
figures describe); elementwise work is left out. Shapes in a jitted jaxpr are global, so the per-device figure
of an evenly sharded program is the total divided by the number of devices. A ``while`` loop whose trip count
is not static (the data decides when it stops, as generation stopping at EOS) is counted ``unknown_trips`` times
(default once; a caller that knows the bound passes it, for the worst case) and reported in ``unknown_trip_loops``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


@dataclasses.dataclass(frozen=True)
class FlopCount:
    matmul: float
    """FLOPs of dot_general (2 per multiply-add)."""
    conv: float
    unknown_trip_loops: int = 0
    """while loops with no static trip count (counted ``unknown_trips`` times)."""

    @property
    def total(self) -> float:
        return self.matmul + self.conv

    def __add__(self, other: "FlopCount") -> "FlopCount":
        return FlopCount(self.matmul + other.matmul, self.conv + other.conv,
                         self.unknown_trip_loops + other.unknown_trip_loops)

    def scaled(self, k: float) -> "FlopCount":
        return FlopCount(self.matmul * k, self.conv * k, self.unknown_trip_loops)


ZERO = FlopCount(0.0, 0.0)


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs[d] for d in lc)
    batch = math.prod(lhs[d] for d in lb)
    lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
    rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in rb)
    return 2.0 * batch * lhs_free * rhs_free * contracted


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    # rhs_spec = (out feature dim, in feature dim, *spatial dims)
    rhs_spec = dn.rhs_spec
    in_features = rhs[rhs_spec[1]]
    window = math.prod(rhs[d] for d in rhs_spec[2:])
    # rhs's in-feature dim is already input features / feature_group_count.
    return 2.0 * math.prod(out) * in_features * window


def _jaxprs_in(value: Any):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _jaxprs_in(v)


# cuDNN fused attention (jax.nn.dot_product_attention(implementation="cudnn")): products per call.
_CUDNN_ATTENTION = {"dot_product_attention_fwd_wrapper": 2, "dot_product_attention_bwd_wrapper": 5}


def _cudnn_attention_flops(eqn) -> float:
    q, k = (v.aval.shape for v in eqn.invars[:2])
    if eqn.params.get("layout", 0) == 1:  # BNTH
        (b, n, t, h), s = q, k[2]
    else:  # BTNH
        (b, t, n, h), s = q, k[1]
    return _CUDNN_ATTENTION[eqn.primitive.name] * 2.0 * b * n * t * s * h


def _shard_count(eqn) -> int:
    mesh = eqn.params.get("mesh")
    axes = eqn.params.get("manual_axes", eqn.params.get("axis_names", ()))
    if mesh is None:
        return 1
    return math.prod(mesh.shape[a] for a in axes) if axes else mesh.size


def count_jaxpr(jaxpr: jex_core.Jaxpr, unknown_trips: int = 1) -> FlopCount:
    total = ZERO
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total = total + FlopCount(_dot_flops(eqn), 0.0)
        elif name == "conv_general_dilated":
            total = total + FlopCount(0.0, _conv_flops(eqn))
        elif name == "scan":
            total = total + count_jaxpr(eqn.params["jaxpr"].jaxpr, unknown_trips).scaled(eqn.params["length"])
        elif name == "cond":
            branches = [count_jaxpr(b.jaxpr, unknown_trips) for b in eqn.params["branches"]]
            total = total + max(branches, key=lambda c: c.total)
        elif name == "while":
            body = sum((count_jaxpr(eqn.params[k].jaxpr, unknown_trips) for k in ("body_jaxpr", "cond_jaxpr")), ZERO)
            total = total + FlopCount(body.matmul * unknown_trips, body.conv * unknown_trips,
                                      body.unknown_trip_loops + 1)
        elif name in _CUDNN_ATTENTION:
            total = total + FlopCount(_cudnn_attention_flops(eqn), 0.0)
        elif name == "pallas_call":
            grid = math.prod(eqn.params["grid_mapping"].grid)
            total = total + count_jaxpr(eqn.params["jaxpr"], unknown_trips).scaled(grid)
        elif name == "shard_map":
            total = total + count_jaxpr(eqn.params["jaxpr"], unknown_trips).scaled(_shard_count(eqn))
        elif name in ("custom_jvp_call", "custom_vjp_call"):
            total = total + count_jaxpr(eqn.params["call_jaxpr"].jaxpr, unknown_trips)
        else:
            for value in eqn.params.values():
                for sub in _jaxprs_in(value):
                    total = total + count_jaxpr(sub, unknown_trips)
    return total


def _dead_code_removed(jaxpr: jex_core.Jaxpr) -> jex_core.Jaxpr:
    # A traced program keeps values nothing uses (the compiler drops them): count what the outputs need.
    try:
        from jax._src.interpreters import partial_eval as pe
    except ImportError:  # pragma: no cover - the private module moved; count everything
        return jaxpr
    return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)[0]


def count_flops(fn: Callable, *args: Any, unknown_trips: int = 1, **kwargs: Any) -> FlopCount:
    """Global FLOPs of ``fn(*args)`` (arrays or ``jax.ShapeDtypeStruct``s), every loop iteration counted, after
    removing the computations no output depends on."""
    return count_jaxpr(_dead_code_removed(jax.make_jaxpr(fn, **kwargs)(*args).jaxpr), unknown_trips)
