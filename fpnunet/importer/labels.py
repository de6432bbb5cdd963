"""En-face labels handed in as images: matched by case or source-file name, placed on the en-face grid.

A label is either on the volume's en-face grid ``(B, A)`` (as the device stores the B-scans: the
importer mirrors it with the volume) or on the localizer's pixel grid, from where it is resampled
onto the en-face grid with nearest-neighbour interpolation through the B-scan positions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.localizer import localizer_image, outside_reason, resample_onto_enface
from fpnunet.importer.scan import Scan
from fpnunet.io import SUPPORTED_ENDINGS, read_image, squeeze_2d, strip_ending


def index_folder(folder: Path) -> dict[str, Path]:
    """``{file name without ending: path}`` of the images in ``folder`` (not recursive)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and any(p.name.lower().endswith(e) for e in SUPPORTED_ENDINGS):
            out[strip_ending(p.name)] = p
    return out


def match(index: dict[str, Path], names: list[str]) -> Path | None:
    """The first file whose name (without ending) is one of ``names``."""
    for n in names:
        if n in index:
            return index[n]
    return None


def load_label(path: Path, scan: Scan, affine: np.ndarray | None, shape_ba: tuple[int, int],
               label_values: list[int]) -> np.ndarray:
    """The label as uint8 ``(B, A)`` on the en-face grid (device orientation, not yet mirrored)."""
    arr = squeeze_2d(read_image(path).array)
    if arr.ndim != 2:
        raise FPNError(f"{path}: a label must be a 2D image, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise FPNError(f"{path}: label values must be integers (an interpolated or probability map?)")
    values = set(np.unique(arr).astype(np.int64).tolist())
    if len(label_values) == 2 and values <= {0, 255} and 255 not in label_values:
        arr = (arr > 0).astype(np.uint8) * max(label_values)  # a 0/255 mask for the one class
        values = set(np.unique(arr).tolist())
    unknown = sorted(values - set(label_values))
    if unknown:
        raise FPNError(f"{path}: label values {unknown[:10]} are not among the classes {sorted(label_values)}")
    n_b, n_a = shape_ba
    loc_shape = scan.localizer.shape[:2] if scan.localizer is not None else None
    if arr.shape == (n_b, n_a):
        return arr.astype(np.uint8)
    if loc_shape is not None and arr.shape == loc_shape:
        if affine is None:
            raise FPNError(f"{path}: label on the localizer grid, but the scan has no B-scan positions to place it")
        why = outside_reason(scan, affine, shape_ba)
        if why:
            raise FPNError(f"{path}: label on the localizer grid cannot be placed: {why}")
        assert scan.localizer_spacing is not None
        img = localizer_image(arr, scan.localizer_spacing, scan.localizer_origin)
        import SimpleITK as sitk

        img = sitk.Cast(img, sitk.sitkUInt8)
        return resample_onto_enface(img, affine, shape_ba, label=True).astype(np.uint8)
    grids = f"the en-face plane {(n_b, n_a)}" + (f" nor the localizer {tuple(loc_shape)}" if loc_shape else "")
    hint = " (transposed?)" if arr.shape == (n_a, n_b) else ""
    raise FPNError(f"{path}: label shape {arr.shape} matches neither {grids}{hint}")
