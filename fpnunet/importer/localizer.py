"""The localizer (SLO/NIR) resampled onto the volume's en-face grid ``(B, A)`` with SimpleITK.

The B-scan positions give, for every en-face pixel ``(b, a)``, its point on the localizer
(:class:`~fpnunet.importer.geometry.Raster.affine`): no image registration is needed. When the
positions are missing or fall outside the localizer no SLO is written (never a wrong one).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from fpnunet.importer.scan import Scan

SLO_FROM_HEADER = "the export's localizer, placed by the B-scan positions in its header"
"""The report's ``slo_from`` for a localizer placed by header positions (Topcon says more: :mod:`.topcon_place`)."""


def localizer_image(array: np.ndarray, spacing: tuple[float, float], origin: tuple[float, float]) -> sitk.Image:
    """A 2D SimpleITK image of ``array`` ``(rows, cols)``; ``spacing`` ``(sy, sx)``; ``origin`` ``(x, y)``."""
    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    img.SetSpacing([float(spacing[1]), float(spacing[0])])
    img.SetOrigin([float(origin[0]), float(origin[1])])
    return img


def enface_transform(affine: np.ndarray) -> sitk.AffineTransform:
    """En-face index ``(a, b)`` -> localizer physical ``(x, y)``."""
    t = sitk.AffineTransform(2)
    t.SetMatrix([float(affine[0, 0]), float(affine[0, 1]), float(affine[1, 0]), float(affine[1, 1])])
    t.SetTranslation([float(affine[0, 2]), float(affine[1, 2])])
    return t


def enface_reference(shape_ba: tuple[int, int]) -> sitk.Image:
    ref = sitk.Image([int(shape_ba[1]), int(shape_ba[0])], sitk.sitkFloat32)
    ref.SetSpacing([1.0, 1.0])
    return ref


def outside_reason(scan: Scan, affine: np.ndarray, shape_ba: tuple[int, int]) -> str:
    """Empty when every en-face pixel lies on the localizer, else why not (pixel coordinates)."""
    assert scan.localizer is not None and scan.localizer_spacing is not None
    rows, cols = scan.localizer.shape[:2]
    n_b, n_a = shape_ba
    idx = np.array([[0, 0, 1], [n_a - 1, 0, 1], [0, n_b - 1, 1], [n_a - 1, n_b - 1, 1]], dtype=np.float64)
    xy = idx @ affine.T
    px = (xy[:, 0] - scan.localizer_origin[0]) / scan.localizer_spacing[1]
    py = (xy[:, 1] - scan.localizer_origin[1]) / scan.localizer_spacing[0]
    tol = 0.5 + 1e-6
    bad = (px < -tol) | (px > cols - 1 + tol) | (py < -tol) | (py > rows - 1 + tol)
    if not bad.any():
        return ""
    k = int(np.argmax(bad))
    return (f"B-scan positions fall outside the localizer (a corner of the scan at pixel "
            f"({px[k]:.1f}, {py[k]:.1f}) of a {cols} x {rows} localizer)")


def resample_onto_enface(image: sitk.Image, affine: np.ndarray, shape_ba: tuple[int, int], label: bool = False,
                         extra: sitk.Transform | None = None) -> np.ndarray:
    """``image`` (in the localizer's frame, or in another frame mapped to it by ``extra``: localizer
    physical -> image physical) sampled at every en-face pixel; ``(B, A)`` float32 (labels: as is)."""
    t: sitk.Transform = enface_transform(affine)
    if extra is not None:
        t = sitk.CompositeTransform([extra, t])  # applied right to left: index -> localizer -> image
    ref = enface_reference(shape_ba)
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    pixel = image.GetPixelID() if label else sitk.sitkFloat32
    out = sitk.Resample(image, ref, t, interp, 0.0, pixel)
    return sitk.GetArrayFromImage(out)


def register_localizer(scan: Scan, affine: np.ndarray | None,
                       shape_ba: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """``(SLO on the en-face grid (B, A) float32, "")`` or ``(None, why no SLO is written)``."""
    if scan.localizer_note:
        return None, scan.localizer_note
    if scan.localizer is None or scan.localizer_spacing is None:
        return None, "no localizer image in the export"
    if affine is None:
        return None, "no B-scan positions in the header"
    why = outside_reason(scan, affine, shape_ba)
    if why:
        return None, why
    img = localizer_image(scan.localizer, scan.localizer_spacing, scan.localizer_origin)
    return resample_onto_enface(img, affine, shape_ba), ""
