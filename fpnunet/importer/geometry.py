"""Raster geometry of a scan: parallel, equally spaced B-scans; spacing in mm; en-face index -> localizer.

The en-face grid is ``(B, A)``: row ``b`` is B-scan ``b`` as stored, column ``a`` its A-scan ``a``.
A-scan ``a`` of B-scan ``b`` sits on the localizer at ``start_b + (end_b - start_b) * a / (A - 1)``
(eyepy's convention); :func:`raster_geometry` fits the affine map ``(a, b) -> (x, y)`` to all
start and end points and refuses scans that are no raster (radial/star patterns, unequal spacing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.scan import Scan

MAX_ANGLE_DEG = 1.0
"""B-scans whose directions differ by more than this are not parallel (radial, star)."""
MAX_SPACING_DEVIATION = 0.05
"""Largest relative deviation of one B-scan step from the mean step."""


@dataclass
class Raster:
    """``spacing`` ``(sB, sD, sA)`` mm; ``affine`` 2x3 ``(x, y) = affine @ (a, b, 1)`` in the
    localizer's physical frame (``None`` without positions); ``notes`` for the report."""

    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    notes: list[str]
    bscan_from: str = ""
    """Where the B-scan distance came from (the report's ``bscan_distance_from``)."""


def _fit_affine(pos: np.ndarray, n_a: int) -> tuple[np.ndarray, float]:
    n_b = pos.shape[0]
    b = np.arange(n_b, dtype=np.float64)
    src = np.concatenate([np.stack([np.zeros(n_b), b, np.ones(n_b)], 1),
                          np.stack([np.full(n_b, n_a - 1.0), b, np.ones(n_b)], 1)])
    dst = np.concatenate([pos[:, 0], pos[:, 1]])
    sol, *_ = np.linalg.lstsq(src, dst, rcond=None)
    residual = float(np.abs(src @ sol - dst).max())
    return sol.T, residual


def raster_geometry(scan: Scan) -> Raster:
    """Check that ``scan`` is a raster of parallel, equally spaced B-scans and work out its spacing.

    Raises a one-line :class:`FPNError` naming the file otherwise.
    """
    src = scan.source
    n_b, _, n_a = scan.volume.shape
    if n_b < 2 or n_a < 2:
        raise FPNError(f"{src}: {n_b} B-scan(s) of {n_a} A-scans is no volume (need at least 2 x 2)")
    s_b, s_d, s_a = scan.spacing
    notes: list[str] = []
    affine = None
    bscan_from = scan.spacing_source or "header"
    pos = scan.positions
    if pos is not None and pos.shape == (n_b, 2, 2):
        start, end = pos[:, 0], pos[:, 1]
        d = end - start
        length = np.linalg.norm(d, axis=1)
        if np.any(length <= 0):
            raise FPNError(f"{src}: a B-scan starts where it ends (a circle scan?); "
                           "only raster volumes can be imported")
        u = d / length[:, None]
        cosines = np.clip(u @ u[0], -1.0, 1.0)
        angle = float(np.degrees(np.arccos(cosines)).max())
        if angle > MAX_ANGLE_DEG:
            raise FPNError(f"{src}: B-scans are not parallel (directions differ by up to {angle:.0f} degrees): "
                           "a radial or star scan? only raster volumes of parallel B-scans can be imported")
        if np.ptp(length) > 0.02 * length.mean():
            raise FPNError(f"{src}: B-scans have different lengths ({length.min():.3g} to {length.max():.3g} "
                           f"{scan.positions_unit}); only raster volumes can be imported")
        normal = np.array([-u[0, 1], u[0, 0]])
        across = ((start + end) / 2 - (start[0] + end[0]) / 2) @ normal
        steps = np.diff(across)
        mean = float(steps.mean())
        if mean == 0 or np.any(np.sign(steps) != np.sign(mean)) or \
                np.abs(steps - mean).max() > MAX_SPACING_DEVIATION * abs(mean):
            raise FPNError(f"{src}: B-scans are not equally spaced (steps from {np.abs(steps).min():.4g} to "
                           f"{np.abs(steps).max():.4g} {scan.positions_unit}); only raster volumes can be imported")
        affine, residual = _fit_affine(pos, n_a)
        if residual > 0.25 * abs(mean):
            raise FPNError(f"{src}: B-scan positions do not form a raster (off by {residual:.3g} "
                           f"{scan.positions_unit}); only raster volumes can be imported")
        if scan.mm_per_unit > 0:
            step_mm = abs(mean) * scan.mm_per_unit
            if s_b is None:
                s_b = step_mm
                bscan_from = f"B-scan positions ({scan.positions_unit})"
                notes.append("B-scan distance from the B-scan positions")
            elif abs(s_b - step_mm) > 0.1 * s_b:
                notes.append(f"header B-scan distance {s_b:.4g} mm, positions give {step_mm:.4g} mm (header kept)")
            if s_a is None:
                s_a = float(length.mean()) * scan.mm_per_unit / (n_a - 1)
                notes.append("lateral pixel size from the B-scan length")
            if scan.positions_unit != "mm":
                notes.append(f"positions in {scan.positions_unit}, {scan.mm_per_unit} mm per unit assumed")
    elif pos is not None:
        raise FPNError(f"{src}: {pos.shape[0]} B-scan positions for {n_b} B-scans")
    for name, v in (("B-scan distance", s_b), ("axial pixel size", s_d), ("lateral pixel size", s_a)):
        if v is None:
            where = (" (read: SpacingBetweenSlices, SliceThickness, Plane Position, Ophthalmic Frame Location)"
                     if scan.format == "dicom-opt" and name == "B-scan distance" else "")
            raise FPNError(f"{src}: the {name} is neither in the header nor derivable from B-scan positions{where}")
        if not (math.isfinite(v) and v > 0):
            raise FPNError(f"{src}: the {name} in the header is {v!r} mm; it must be a positive number")
    return Raster((float(s_b), float(s_d), float(s_a)), affine, notes, bscan_from)  # type: ignore[arg-type]


def mirror_a(array: np.ndarray) -> np.ndarray:
    """Flip the A-scan (last) axis: an OS (left-eye) scan mirrored to look like an OD one, or back."""
    return np.ascontiguousarray(np.flip(array, axis=-1))
