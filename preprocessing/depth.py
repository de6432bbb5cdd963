"""Depth reduction: crop the depth to a window around the retina, then resample it.

Only the depth axis (axis 1 of ``(B, D, A)``) is touched; the en-face axes are never resampled,
so labels and en-face images stay on the volume's own ``(B, A)`` grid.
"""
from __future__ import annotations

import numpy as np

from fpnunet.retina import crop_window, depth_profile


def background_value(volume: np.ndarray) -> float:
    """The background intensity of a ``(B, D, A)`` volume: the 10th percentile of its depth profile
    (the mean of the dim vitreous rows), the same background :func:`fpnunet.retina.detect_retina_band` uses."""
    return float(np.percentile(depth_profile(volume), 10))


def depth_window(band: tuple[int, int], depth: int, height: int) -> tuple[int, int]:
    """``[start, stop)`` raw rows kept: ``height`` rows centred on ``band``; ``height <= 0`` keeps all."""
    if height <= 0:
        return 0, depth
    return crop_window(band, depth, height)


def crop_depth(volume: np.ndarray, window: tuple[int, int], pad_value: float = 0.0) -> np.ndarray:
    """Rows ``window = [start, stop)`` of ``volume`` ``(B, D, A)`` -> ``(B, stop - start, A)``.

    Rows outside ``[0, D)`` are filled with ``pad_value``. Returns a float32 copy.
    """
    b, d, a = volume.shape
    start, stop = int(window[0]), int(window[1])
    out = np.full((b, stop - start, a), pad_value, dtype=np.float32)
    src0, src1 = max(start, 0), min(stop, d)
    if src1 > src0:
        out[:, src0 - start : src1 - start] = volume[:, src0:src1]
    return out


def linear_resample_matrix(n_in: int, n_out: int, antialias: bool = True) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1D linear interpolation between pixel-centre grids.

    Output row ``j`` sits at input coordinate ``(j + 0.5) * n_in / n_out - 0.5``. When shrinking
    (``n_out < n_in``) and ``antialias`` is set, the triangle kernel is widened by the shrink
    factor (as PIL and ``torch.nn.functional.interpolate(antialias=True)`` do), so the speckle
    of the dropped rows is averaged instead of aliased. Rows sum to 1 (borders renormalised).
    """
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    if antialias and scale > 1.0:
        src = np.arange(n_in)
        w = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / scale, 0.0, None)
    else:  # plain linear interpolation between the two nearest rows, clamped at the borders
        c = np.clip(centres, 0, n_in - 1)
        i0 = np.floor(c).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = c - i0
        w = np.zeros((n_out, n_in))
        np.add.at(w, (np.arange(n_out), i0), 1 - f)
        np.add.at(w, (np.arange(n_out), i1), f)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def resample_depth(volume: np.ndarray, target: int, antialias: bool = True) -> np.ndarray:
    """Linear resampling of the depth axis: ``(B, D, A)`` -> float32 ``(B, target, A)``.

    Applies :func:`linear_resample_matrix` as a few gathered taps per output row (the matrix is
    banded: 2 taps when enlarging, about ``2 * D / target`` when shrinking), which is far cheaper
    than a dense matrix product over the whole volume.
    """
    volume = np.asarray(volume, dtype=np.float32)
    d = volume.shape[1]
    if d == target:
        return volume
    w = linear_resample_matrix(d, target, antialias)
    nnz = w != 0
    taps = int(nnz.sum(axis=1).max())
    # per output row: the first input row of its band and the weights of the `taps` rows from there
    first = np.minimum(nnz.argmax(axis=1), d - taps)
    out = np.zeros((volume.shape[0], target, volume.shape[2]), dtype=np.float32)
    rows = np.arange(target)
    for k in range(taps):
        idx = first + k
        wk = w[rows, idx]
        out += wk[None, :, None] * volume[:, idx, :]
    return out
