"""Small in-place array helpers for per-frame code (the stereo node's 640x480 outputs).

numpy's boolean-mask assignment (``a[mask] = v``), ``np.where`` and ``np.copyto(where=)`` branch per element
and take 0.6-1.5 ms on a 640x480 frame with a scattered mask (measured on the 2-core CI machine); OpenCV's
masked copy does the same in ~0.06 ms. :func:`fill_masked` uses OpenCV where it applies and numpy otherwise,
with identical results.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["fill_masked"]

# dtypes cv2.copyTo handles without conversion (it would silently write into a converted copy otherwise).
_CV_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def fill_masked(array: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    """``array[mask] = value`` in place; returns ``array``.

    Args:
        array: any array; the fast path covers C-contiguous H x W and H x W x C (C <= 4) arrays.
        mask: boolean, either of ``array``'s shape (per element) or, for an H x W x C array, H x W (per pixel).
        value: a scalar, or for a per-pixel mask one value per channel.
    """
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean, instead got dtype {mask.dtype}")
    if mask.shape == array.shape:
        fast = array.ndim == 2
    elif array.ndim == 3 and mask.shape == array.shape[:2]:
        fast = array.shape[2] <= 4
    else:
        raise ValueError(f"mask of shape {mask.shape} does not fit an array of shape {array.shape}")
    fast = (
        fast
        and array.dtype.type in _CV_DTYPES
        and array.dtype.isnative
        and array.flags.c_contiguous
        and array.flags.writeable
        and array.size > 0
    )
    if not fast:
        array[mask] = value
        return array
    # The constant source image, built by repeating one pixel's bytes (numpy's broadcast assignment of a
    # 3-byte colour takes 2 ms at 640x480; repeating bytes 0.02 ms).
    pixel = np.broadcast_to(np.asarray(value, dtype=array.dtype), array.shape[2:]).tobytes()
    source = np.frombuffer(pixel * (array.shape[0] * array.shape[1]), dtype=array.dtype).reshape(array.shape)
    written = cv2.copyTo(source, np.ascontiguousarray(mask).view(np.uint8), array)
    if written is not array and not np.shares_memory(written, array):  # never expected; keep the contract
        array[...] = written
    return array
