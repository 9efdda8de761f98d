"""LSRL, the Linear State Recurrent Language: the primitives, the library functions and the reference interpreter.

A program written for the published language runs unchanged after ``from recurrent.lsrl import *`` (the
published API and what still differs: ``recurrent/lsrl/COMPATIBILITY.md``).
"""

from recurrent.lsrl import utils
from recurrent.lsrl.matrix import Matrix, MatrixMode, get_global_matrix_mode, matrix_mode, set_global_matrix_mode
from recurrent.lsrl.sugar import (
    f_and,
    f_bump,
    f_constant,
    f_eq,
    f_ifelse,
    f_ifelse_mul,
    f_ifelse_step,
    f_ifeq,
    f_larger,
    f_modulo_counter,
    f_neq,
    f_not,
    f_or,
    f_smaller,
    f_step,
)
from recurrent.lsrl.compiled_program import ForEach
from recurrent.lsrl.syntax import (
    Concat,
    Input,
    LinState,
    Linear,
    Multiplicative,
    ReLU,
    Slice,
    Variable,
    f_relu_identity,
    validate,
)

__all__ = [
    "Concat",
    "ForEach",
    "Input",
    "LinState",
    "Matrix",
    "MatrixMode",
    "Linear",
    "Multiplicative",
    "ReLU",
    "Slice",
    "Variable",
    "f_and",
    "f_bump",
    "f_constant",
    "f_eq",
    "f_ifelse",
    "f_ifelse_mul",
    "f_ifelse_step",
    "f_ifeq",
    "f_larger",
    "f_modulo_counter",
    "f_neq",
    "f_not",
    "f_or",
    "f_relu_identity",
    "f_smaller",
    "f_step",
    "get_global_matrix_mode",
    "matrix_mode",
    "set_global_matrix_mode",
    "utils",
    "validate",
]
