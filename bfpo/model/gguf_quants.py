"""Dequantisation of GGML block formats to float32 in NumPy.

Each row of a tensor is a sequence of blocks; a block stores float16 scale(s) and packed integers q, and the
values are (block size, bytes per block):

* Q8_0 (32, 34): d, 32 int8 q;                      x = d q
* Q4_0 (32, 18): d, 16 bytes of 4-bit q;            x = d (q - 8)
* Q4_1 (32, 20): d, m, 16 bytes of 4-bit q;         x = d q + m
  (in the 4-bit formats byte j holds element j in its low nibble and element j + 16 in its high nibble)
* Q4_K (256, 144): d, dmin, 12 bytes packing eight 6-bit (scale, min) pairs, 128 bytes of 4-bit q; sub-block s
  of 32 values has x = d scale_s q - dmin min_s. Sub-blocks 2c and 2c+1 share bytes 32c..32c+31 of q (low and
  high nibbles).
* Q6_K (256, 210): 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales, d; x = d scale_s (q - 32)
  with 16-value sub-blocks s.
"""

from __future__ import annotations

import numpy as np

from bfpo.errors import ModelError

BLOCKS = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def _f16(raw: np.ndarray) -> np.ndarray:
    """float16 fields stored as 2 bytes -> float32 column."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16k] bytes -> [n, 32k] values: all low nibbles, then all high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)


def _q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]) - 8.0)


def _q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * _nibbles(b[:, 4:]) + _f16(b[:, 2:4])


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eight 6-bit scales and mins from 12 bytes: sub-blocks 0-3 use the low 6 bits of bytes 0-3 (scales) and
    4-7 (mins); sub-blocks 4-7 take 4 low bits from bytes 8-11 and their top 2 bits from the top of bytes 0-7."""
    p = packed.astype(np.uint8)
    scales = np.empty((p.shape[0], 8), np.uint8)
    mins = np.empty((p.shape[0], 8), np.uint8)
    scales[:, :4] = p[:, 0:4] & 63
    mins[:, :4] = p[:, 4:8] & 63
    scales[:, 4:] = (p[:, 8:12] & 0x0F) | ((p[:, 0:4] >> 6) << 4)
    mins[:, 4:] = (p[:, 8:12] >> 4) | ((p[:, 4:8] >> 6) << 4)
    return scales.astype(np.float32), mins.astype(np.float32)


def _q4_k(b: np.ndarray) -> np.ndarray:
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    scales, mins = _k_scales(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 32)  # 4 chunks of 32 bytes, each holding two sub-blocks
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)
    return (d[:, :, None] * scales[:, :, None] * q - dmin[:, :, None] * mins[:, :, None]).reshape(-1, 256)


def _q6_k(b: np.ndarray) -> np.ndarray:
    ql = b[:, 0:128].reshape(-1, 2, 64)
    qh = b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 16)
    d = _f16(b[:, 208:210])
    # Within each half of 128 values: quarter k (32 values) takes low bits from ql[(k % 2) * 32 ...] (low
    # nibble for k < 2, high for k >= 2) and high bits from qh at bit offset 2k.
    low = np.stack([ql[:, :, :32] & 0x0F, ql[:, :, 32:] & 0x0F, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], axis=2)
    high = np.stack([(qh >> (2 * k)) & 3 for k in range(4)], axis=2)
    q = ((low | (high << 4)).astype(np.float32) - 32.0).reshape(-1, 16, 16)
    return (d[:, :, None] * scales[:, :, None] * q).reshape(-1, 256)


_DEQUANT = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k, "Q6_K": _q6_k}
SUPPORTED = ("F32", "F16", "BF16") + tuple(_DEQUANT)


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...], what: str = "tensor") -> np.ndarray:
    """float32 array of ``shape`` (rows last-axis-contiguous, as GGML stores them) from the tensor's raw data."""
    width = {"F32": 4, "F16": 2, "BF16": 2}.get(type_name)
    if width is not None and np.asarray(raw).nbytes != int(np.prod(shape)) * width:
        raise ModelError(f"{what}: {np.asarray(raw).nbytes} bytes of {type_name} do not hold a tensor of shape "
                         f"{tuple(shape)}")
    if type_name == "F32":
        return np.asarray(raw).view(np.float32).reshape(shape)
    if type_name == "F16":
        return np.asarray(raw).view(np.float16).astype(np.float32).reshape(shape)
    if type_name == "BF16":
        bits = np.asarray(raw).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if type_name not in _DEQUANT:
        raise ModelError(f"{what}: quantisation type {type_name} is not supported; supported: {', '.join(SUPPORTED)}")
    size, nbytes = BLOCKS[type_name]
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if raw.size % nbytes or (raw.size // nbytes) * size != int(np.prod(shape)):
        raise ModelError(f"{what}: {raw.size} bytes of {type_name} do not hold a tensor of shape {tuple(shape)}")
    return _DEQUANT[type_name](raw.reshape(-1, nbytes)).reshape(shape)
