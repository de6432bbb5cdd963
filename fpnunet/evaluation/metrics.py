"""Segmentation metrics for en-face masks: Dice, IoU, HD95 (mm), area (mm^2).

Masks are numpy arrays in numpy order, ``(B, A)`` for an en-face mask; ``spacing`` is in the
same order, ``(sB, sA)``, in mm. The functions accept any dimensionality whose ``spacing`` has one
entry per axis (for 2D masks "area" is in mm^2).

Conventions for empty masks (documented choices, not nnU-Net's NaN):

* :func:`dice`, :func:`iou`: empty reference and empty prediction -> ``1.0`` (nothing to find,
  nothing found); exactly one empty -> ``0.0``.
* :func:`hd95`: both empty -> ``0.0``; exactly one empty -> ``NaN`` (no boundary to measure a
  distance to). Means over cases ignore NaN and report how many there were.

HD95 follows medpy / MONAI: the boundary of a mask is the mask minus its erosion by the
cross-shaped (connectivity 1) structuring element; distances are Euclidean in mm
(``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``); the result is
``max(P95(d(pred -> ref)), P95(d(ref -> pred)))``, the larger of the two directed 95th
percentiles (``numpy.percentile``, linear interpolation).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from fpnunet.errors import FPNError

METRIC_KEYS = (
    "Dice", "IoU", "HD95", "ref_area_mm2", "pred_area_mm2", "area_abs_error_mm2",
    "TP", "FP", "FN", "TN", "n_ref", "n_pred",
)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def _check_pair(ref: np.ndarray, pred: np.ndarray) -> None:
    if ref.shape != pred.shape:
        raise FPNError(f"reference and prediction shapes differ: {ref.shape} vs {pred.shape}")


def confusion(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """``(TP, FP, FN, TN)`` pixel counts of two binary masks of the same shape."""
    r, p = _as_bool(ref), _as_bool(pred)
    _check_pair(r, p)
    tp = int(np.count_nonzero(r & p))
    fp = int(np.count_nonzero(~r & p))
    fn = int(np.count_nonzero(r & ~p))
    tn = int(r.size - tp - fp - fn)
    return tp, fp, fn, tn


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice ``2 TP / (2 TP + FP + FN)``; both masks empty -> 1.0, one empty -> 0.0."""
    tp, fp, fn, _ = confusion(ref, pred)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou(ref: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union ``TP / (TP + FP + FN)``; both empty -> 1.0, one empty -> 0.0."""
    tp, fp, fn, _ = confusion(ref, pred)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def _check_spacing(mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != mask.ndim:
        raise FPNError(f"spacing {sp} has {len(sp)} entries but the mask has {mask.ndim} axes {mask.shape}")
    if any(not np.isfinite(s) or s <= 0 for s in sp):
        raise FPNError(f"spacing must be positive and finite, got {sp}")
    return sp


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask: the mask minus its cross-shaped erosion.

    Pixels on the image border count as boundary (the outside is background).
    """
    m = _as_bool(mask)
    if not m.any():
        return m.copy()
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances in mm: ``(d(pred boundary -> ref boundary), d(ref -> pred))``.

    Both masks must be non-empty.
    """
    r, p = _as_bool(ref), _as_bool(pred)
    _check_pair(r, p)
    sp = _check_spacing(r, spacing)
    if not r.any() or not p.any():
        raise ValueError("surface distances need two non-empty masks")
    br, bp = boundary(r), boundary(p)
    dt_ref = ndimage.distance_transform_edt(~br, sampling=sp)
    dt_pred = ndimage.distance_transform_edt(~bp, sampling=sp)
    return dt_ref[bp], dt_pred[br]


def hd95(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (symmetric: the larger directed 95th percentile).

    Both masks empty -> 0.0; exactly one empty -> NaN.
    """
    r, p = _as_bool(ref), _as_bool(pred)
    _check_pair(r, p)
    _check_spacing(r, spacing)
    has_r, has_p = bool(r.any()), bool(p.any())
    if not has_r and not has_p:
        return 0.0
    if has_r != has_p:
        return float("nan")
    d_pr, d_rp = surface_distances(r, p, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def area_mm2(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Area of a 2D mask in mm^2: pixel count times ``sB * sA`` (volume for 3D masks)."""
    m = _as_bool(mask)
    sp = _check_spacing(m, spacing)
    return float(np.count_nonzero(m) * float(np.prod(sp)))


def case_metrics(
    ref_labels: np.ndarray,
    pred_labels: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[str, int],
) -> dict[str, dict[str, float | int]]:
    """Metrics of every foreground class of one case.

    Args:
        ref_labels, pred_labels: integer label maps of the same shape, ``(B, A)``.
        spacing: ``(sB, sA)`` in mm (numpy order).
        labels: ``{"background": 0, "GA": 1, ...}``; value 0 is skipped.

    Returns:
        ``{"1": {"Dice", "IoU", "HD95", "ref_area_mm2", "pred_area_mm2", "area_abs_error_mm2",
        "TP", "FP", "FN", "TN", "n_ref", "n_pred"}, ...}`` keyed by the label value as a string
        (nnU-Net's convention). ``n_ref``/``n_pred`` are the pixel counts of the class.
    """
    ref = np.asarray(ref_labels)
    pred = np.asarray(pred_labels)
    _check_pair(ref, pred)
    sp = _check_spacing(ref, spacing)
    pixel = float(np.prod(sp))
    out: dict[str, dict[str, float | int]] = {}
    for value in sorted({int(v) for v in labels.values() if int(v) != 0}):
        r = ref == value
        p = pred == value
        tp, fp, fn, tn = confusion(r, p)
        n_ref, n_pred = tp + fn, tp + fp
        ref_area, pred_area = n_ref * pixel, n_pred * pixel
        out[str(value)] = {
            "Dice": 1.0 if n_ref + n_pred == 0 else 2.0 * tp / (n_ref + n_pred),
            "IoU": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
            "HD95": hd95(r, p, sp),
            "ref_area_mm2": ref_area,
            "pred_area_mm2": pred_area,
            "area_abs_error_mm2": abs(pred_area - ref_area),
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "TN": tn,
            "n_ref": n_ref,
            "n_pred": n_pred,
        }
    return out
