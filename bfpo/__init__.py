"""Bi-Factorial Preference Optimization: objectives, labeling, data, the causal LM and its evaluation.

Shape letters used in names throughout the package: B batch, T sequence (queries), S key/value sequence,
V vocabulary, D model width, F MLP width, H query heads, K key/value heads, G query heads per key/value head,
E head dimension, L layers, C chunk.
"""

from bfpo.errors import BFPOError, DataError, ModelError

__all__ = ["BFPOError", "DataError", "ModelError"]
