"""The published module name ``lsrl.sugar_blocks``: the library functions."""

from recurrent.lsrl.sugar import (f_and, f_bump, f_constant, f_eq, f_ifelse, f_ifelse_mul, f_ifelse_step, f_ifeq,
                                  f_larger, f_modulo_counter, f_neq, f_not, f_or, f_smaller, f_step)

__all__ = ["f_and", "f_bump", "f_constant", "f_eq", "f_ifelse", "f_ifelse_mul", "f_ifelse_step", "f_ifeq", "f_larger",
           "f_modulo_counter", "f_neq", "f_not", "f_or", "f_smaller", "f_step"]
