"""LSRL: programs that compile to the weights of fully recurrent models.

``recurrent.lsrl`` is the language and its interpreter, ``recurrent.ir`` the typed intermediate form,
``recurrent.passes`` the compiler passes run in order by ``recurrent.compile``, ``recurrent.chain`` the compiled
layer chain, ``recurrent.scan`` its jitted execution, ``recurrent.targets.linear_rnn`` the chain as a Flax
module, ``recurrent.programs`` the paper's programs and their prompt builders.

    from recurrent.lsrl import Input, LinState, ForEach, f_larger
    x = Input(1)
    prog = ForEach(f_larger(LinState(x, [[1.0]], [[1.0]], [0.0]), 2.5))   # "more than 2 ones so far"
    chain = compile_program(prog)                                        # layers, summary()
    y_BxTxO = LinearRNN(chain)(tokens_BxTxD)                             # float32, lax.scan

Letters in array names: B batch, T tokens, D input dim, O output dim, R recurrent lanes, W layer width.
"""

from recurrent.chain import Chain, ChainSummary, Layer
from recurrent.compile import CompileConfig, compile_program
from recurrent.errors import CompileError
from recurrent.scan import chain_kinds, chain_params, run_chain
from recurrent.targets.linear_rnn import LinearRNN

__all__ = [
    "Chain",
    "ChainSummary",
    "CompileConfig",
    "CompileError",
    "Layer",
    "LinearRNN",
    "chain_kinds",
    "chain_params",
    "compile_program",
    "run_chain",
]
