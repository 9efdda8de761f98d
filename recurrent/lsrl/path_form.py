"""A compiled chain (``recurrent.chain``) written back as an LSRL path graph, the form the published compiler
leaves a program in: Input -> LinState -> [Linear -> ReLU | Linear -> Multiplicative]* -> ... -> Linear.

    state layer  z = W h + b, s_t = A s_{t-1} + z[:r], h' = [s_t; z[r:]]
                 -> one LinState with A' = diag(A, 0), B = W, bias = b, init = [init; 0]
                    (the pass-through lanes are rows with A' = 0, as published)
    relu layer   -> Linear(W, b) -> ReLU
    mul layer    -> Linear(W, b) -> Multiplicative
    readout      -> Linear(W_out, b_out)

Every node holds the compiled weights, so a user of the published code reads the layers as before; running the
path through the interpreter gives the chain's outputs (tested).
"""

from __future__ import annotations

import numpy as np

from recurrent.chain import Chain
from recurrent.lsrl.syntax import Input, LinState, Linear, Multiplicative, ReLU, Variable


def chain_to_path(chain: Chain) -> Variable:
    """The output node of the path graph that computes ``chain``."""
    h: Variable = Input(chain.in_dim)
    for i, layer in enumerate(chain.layers):
        if layer.kind == "state":
            width, r = layer.width, layer.recurrent
            a = np.zeros((width, width))
            a[:r, :r] = layer.A
            init = np.zeros(width)
            init[:r] = layer.init
            h = LinState(h, a, layer.weight, init, name=f"layer{i}.state", bias=layer.bias)
        else:
            z = Linear(h, layer.weight, layer.bias, name=f"layer{i}.linear")
            h = ReLU(z, name=f"layer{i}.relu") if layer.kind == "relu" else Multiplicative(z, name=f"layer{i}.mul")
    return Linear(h, chain.readout_weight, chain.readout_bias, name="readout")
