"""The published module name ``lsrl.basic_blocks``: the primitives and ``ForEach``."""

from recurrent.errors import CompileError as GraphSimplificationError
from recurrent.lsrl.compiled_program import ForEach
from recurrent.lsrl.syntax import Concat, Input, LinState, Linear, Multiplicative, ReLU, Slice, Variable, f_relu_identity

__all__ = ["Concat", "ForEach", "GraphSimplificationError", "Input", "LinState", "Linear", "Multiplicative", "ReLU",
           "Slice", "Variable", "f_relu_identity"]
