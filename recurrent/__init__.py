"""LSRL: programs that compile to the weights of fully recurrent models.

``recurrent.lsrl`` is the language and its interpreter, ``recurrent.ir`` the typed intermediate form,
``recurrent.passes`` the compiler passes run in order by ``recurrent.compile``, ``recurrent.scan`` the jitted
execution of a compiled chain, ``recurrent.programs`` the paper's programs and their prompt builders.

Letters in array names: B batch, T tokens, D input dim, O output dim, S state lanes, W layer width.
"""

from recurrent.errors import CompileError

__all__ = ["CompileError"]
