"""The published module name ``lsrl.matrix_tools``: ``Matrix`` and the arithmetic modes."""

from recurrent.lsrl.matrix import Matrix, MatrixMode, get_global_matrix_mode, matrix_mode, set_global_matrix_mode

__all__ = ["Matrix", "MatrixMode", "get_global_matrix_mode", "matrix_mode", "set_global_matrix_mode"]
