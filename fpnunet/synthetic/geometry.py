"""The grid every synthetic volume lives on: default shape, field of view, spacing."""
from __future__ import annotations

DEFAULT_SHAPE: tuple[int, int, int] = (32, 160, 128)
"""Default ``(B, D, A)``: CPU-friendly, B divisible by 4 and A by 16 as the FPN needs."""

FIELD_OF_VIEW_MM: tuple[float, float, float] = (6.0, 1.9, 6.0)
"""Physical extent ``(B, D, A)`` in mm of every synthetic volume, whatever its shape."""

VOLUME_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".nrrd")
"""File endings the generator writes volumes in."""


def spacing_for_shape(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Spacing ``(sB, sD, sA)`` in mm that makes ``shape`` cover :data:`FIELD_OF_VIEW_MM`."""
    return tuple(float(f) / int(s) for f, s in zip(FIELD_OF_VIEW_MM, shape))  # type: ignore[return-value]
