"""The en-face picture an outline is drawn on: the case's SLO, else a projection of its volume.

For case ``CASE`` the folders searched are the ones given plus their siblings in the raw layout
(``imagesTs`` -> ``enfaceTs``; ``labelsTs`` -> ``imagesTs``, ``enfaceTs``; a dataset folder -> its
``enfaceTs``, ``enfaceTr``, ``imagesTs``, ``imagesTr``):

1. ``enface*/CASE_SLO<ending>``: the scanner's SLO/NIR image, resampled onto the mask's grid when
   its pixel grid differs (same field of view, as the dataset format requires);
2. ``images*/CASE_0000<ending>``: the mean over depth of the retina band (the rows with signal,
   :func:`fpnunet.retina.detect_retina_band`) of channel 0, each B-scan's row evened out
   (:func:`projection`): a picture of the fundus in which vessels and GA show.

Nothing found (or unreadable) gives no picture: the outline is drawn on a dark background and the
reason is returned, never raised, since a missing picture must not fail a prediction.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from fpnunet.errors import FPNError
from fpnunet.io import find_projection_axis, read_image, resample_to_shape, squeeze_2d, to_bda
from fpnunet.raw_dataset import enface_dir, enface_stem, find_image, images_dir, layout_split, volume_stem
from fpnunet.retina import detect_retina_band

__all__ = ["search_folders", "find_sources", "enface_background", "projection"]

_SPLITS = ("Ts", "Tr")


def search_folders(folders: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The given folders and their raw-layout siblings, existing ones only, in a stable order."""
    out: list[Path] = []
    for f in folders:
        if f is None:
            continue
        f = Path(f)
        cands = [f]
        split = layout_split(f)
        if split is not None:
            cands += [enface_dir(f.parent, split), images_dir(f.parent, split)]
        cands += [d(f, s) for s in _SPLITS for d in (enface_dir, images_dir)]
        out += [c for c in cands if c.is_dir() and c not in out]
    return out


def find_sources(case: str, folders: Iterable[Path]) -> tuple[Path | None, Path | None]:
    """``(SLO file, channel-0 volume file)`` of ``case`` in ``folders`` (first hit each)."""
    slo = vol = None
    for f in folders:
        slo = slo or find_image(f, enface_stem(case, "SLO"))
        vol = vol or find_image(f, volume_stem(case))
    return slo, vol


def projection(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the retina band along depth ``axis`` of a 3D volume: ``(B, A)`` float32.

    Each B-scan's row is then centred on its median and scaled by its interquartile range (B-scans
    differ in overall brightness, which would stripe the picture) and lightly smoothed along A
    (Gaussian, sigma 1 pixel) against speckle."""
    bda = to_bda(np.asarray(volume, dtype=np.float32), axis)
    top, bottom = detect_retina_band(bda)
    proj = bda[:, top:bottom].mean(axis=1, dtype=np.float64)
    q1, med, q3 = np.percentile(proj, [25, 50, 75], axis=1, keepdims=True)
    proj = (proj - med) / np.maximum(q3 - q1, 1e-6 * max(1.0, float(np.abs(proj).max())))
    return gaussian_filter1d(proj, 1.0, axis=1, mode="nearest").astype(np.float32)


def enface_background(case: str, shape: tuple[int, int], folders: Iterable[str | os.PathLike | None],
                      projection_axis: int | str = "auto") -> tuple[np.ndarray | None, str]:
    """The picture of ``case`` on the en-face grid ``shape`` ``(B, A)`` and where it came from
    (``"SLO"``, ``"volume projection"`` or why there is none)."""
    slo, vol = find_sources(case, search_folders(folders))
    try:
        if slo is not None:
            img = squeeze_2d(read_image(slo).array)
            if img.ndim == 2:
                return resample_to_shape(img.astype(np.float32), shape, is_label=False), "SLO"
        if vol is not None:
            arr = read_image(vol).array
            if arr.ndim == 3:
                axis = projection_axis if isinstance(projection_axis, int) else find_projection_axis(arr.shape, shape)
                proj = projection(arr, 1 if axis is None else axis)
                return resample_to_shape(proj, shape, is_label=False), "volume projection"
    except FPNError as exc:
        return None, f"no picture ({exc})"
    return None, "no SLO or volume found"
