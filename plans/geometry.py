"""Numpy-order geometry of raw volumes: singleton axes, spacing, en-face planes, ``(B, D, A)`` order.

A raw volume is read in numpy order; its projection (depth) axis is moved to 1, so shapes and
spacings become ``(B, D, A)`` and the en-face plane is ``(B, A)``. Shared by verification, the
fingerprint and preprocessing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fpnunet.io import Image


def squeeze_3d(array: np.ndarray) -> np.ndarray:
    """Drop singleton axes of a volume exported with extra axes, e.g. ``(1, B, D, A)`` -> ``(B, D, A)``.

    Arrays with three or fewer axes are returned unchanged (a ``(1, D, A)`` volume stays 3D).
    """
    if array.ndim > 3:
        squeezed = np.squeeze(array)
        if squeezed.ndim == 3:
            return squeezed
    return array


def volume_spacing(img: Image) -> tuple[float, float, float]:
    """Numpy-order spacing of the 3D volume :func:`squeeze_3d` makes of ``img`` (singleton axes dropped)."""
    shape, spacing = img.array.shape, img.spacing
    if len(shape) > 3 and len(squeeze_shape(shape, 3)) == 3:
        spacing = tuple(s for n, s in zip(shape, spacing) if n != 1)
    if len(spacing) != 3:
        return (1.0, 1.0, 1.0)
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def squeeze_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Shape-only twin of :func:`squeeze_3d` (``ndim=3``) and :func:`fpnunet.io.squeeze_2d` (``ndim=2``)."""
    if len(shape) > ndim:
        squeezed = tuple(s for s in shape if s != 1)
        if len(squeezed) == ndim:
            return squeezed
    return tuple(shape)


def plane_shape(volume_shape: Sequence[int], axis: int) -> tuple[int, ...]:
    """The en-face plane of a raw 3D shape when numpy ``axis`` is depth (that axis removed)."""
    return tuple(int(s) for i, s in enumerate(volume_shape) if i != axis)


def bda_order(axis: int) -> list[int]:
    """Raw numpy axes in ``(B, D, A)`` order when ``axis`` is depth (what :func:`fpnunet.io.to_bda` does)."""
    order = [i for i in range(3) if i != axis]
    order.insert(1, axis)
    return order
