"""Preprocessing transforms: a raw case -> network-ready arrays (in memory).

Steps for a volume (:func:`preprocess_volume`, shared with inference): detect the retina band
on channel 0, take normalisation statistics on the raw volume (``Plan.normalization``), crop
``Plan.depth_crop`` raw rows centred on the band (padding with the background value past the
volume), z-score, and resample the depth linearly to ``Configuration.depth``. The en-face axes
``(B, A)`` are never resampled.

:func:`read_case` reads a raw case through :mod:`fpnunet.io` onto the volume's ``(B, A)`` grid
(en-face images scaled to [0, 1], labels as uint8). Writing the results to disk is
:mod:`fpnunet.preprocessing.storage`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from fpnunet.errors import FPNError
from fpnunet.io import EnfaceGeometry, Image, enface_geometry, read_image, resample_to_shape, squeeze_2d, to_bda
from fpnunet.plans.geometry import bda_order, squeeze_3d, volume_spacing
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.preprocessing.depth import background_value, crop_depth, depth_window, resample_depth
from fpnunet.preprocessing.normalization import apply_stats, compute_stats
from fpnunet.raw_dataset import CaseFiles, DatasetInfo
from fpnunet.retina import detect_retina_band
from fpnunet.seeds import case_seed

MAX_CLASS_LOCATIONS = 1000
ENFACE_PERCENTILES = (0.5, 99.5)


# ----------------------------------------------------------------------------- volumes
def _check_channels(channels: list[np.ndarray], plan: Plan) -> None:
    if not channels:
        raise FPNError("preprocess_volume: no channels given (expected a list of (B, D, A) arrays)")
    shapes = [tuple(np.shape(c)) for c in channels]
    if any(len(s) != 3 for s in shapes):
        raise FPNError(f"expected 3D volumes (B, D, A) per channel, got shapes {shapes}")
    if len(set(shapes)) > 1:
        raise FPNError(f"the channels of a volume must have one shape, got {shapes}")
    if len(channels) != plan.num_input_channels:
        raise FPNError(
            f"the plan of {plan.dataset_name} expects {plan.num_input_channels} channel(s) per volume, "
            f"got {len(channels)}"
        )
    for i, c in enumerate(channels):
        c = np.asarray(c)
        if c.dtype.kind in "fc" and not np.isfinite(c).all():
            raise FPNError(f"channel {i} of the volume contains NaN or Inf values")


def normalised_crop(
    channels: list[np.ndarray], plan: Plan, retina_band: tuple[int, int] | None
) -> tuple[list[np.ndarray], tuple[int, int], tuple[int, int]]:
    """Normalised channels cropped to the depth window: float32 ``(B, crop, A)`` each, band, window.

    Everything of :func:`preprocess_volume` but the depth resampling (done per target depth).
    """
    _check_channels(channels, plan)
    depth = int(np.shape(channels[0])[1])
    band = tuple(int(v) for v in retina_band) if retina_band is not None else detect_retina_band(channels[0])
    window = depth_window(band, depth, int(plan.depth_crop))  # type: ignore[arg-type]
    needs_pad = window[0] < 0 or window[1] > depth
    out = []
    for ch in channels:
        ch = np.asarray(ch)
        stats = compute_stats(ch, band, plan.normalization)  # type: ignore[arg-type]
        pad = background_value(ch) if needs_pad else 0.0
        out.append(apply_stats(crop_depth(ch, window, pad), stats, inplace=True))
    return out, band, window  # type: ignore[return-value]


def preprocess_volume(
    channels: list[np.ndarray],
    plan: Plan,
    config: Configuration,
    retina_band: tuple[int, int] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn raw channels (each ``(B, D, A)``, projection axis already at 1) into the network input.

    Returns float32 ``(C, B, config.depth, A)`` and ``{"retina_band": [top, bottom), "crop":
    [start, stop)}`` in raw depth rows. ``retina_band`` defaults to
    :func:`fpnunet.retina.detect_retina_band` of channel 0, so a new volume needs only the plan.
    """
    cropped, band, window = normalised_crop(channels, plan, retina_band)
    out = np.stack([resample_depth(c, int(config.depth)) for c in cropped]).astype(np.float32, copy=False)
    return out, {"retina_band": [int(band[0]), int(band[1])], "crop": [int(window[0]), int(window[1])]}


# ----------------------------------------------------------------------------- raw cases
@dataclass
class RawCase:
    """One raw case on the volume's grid: channels ``(B, D, A)``, en-face images and label ``(B, A)``."""

    case: str
    channels: list[np.ndarray]
    geometry: EnfaceGeometry
    enface: dict[str, np.ndarray] = field(default_factory=dict)
    label: np.ndarray | None = None
    raw_shape: tuple[int, ...] = ()
    spacing_bda: tuple[float, float, float] = (1.0, 1.0, 1.0)


def scale_enface(image: np.ndarray) -> np.ndarray:
    """Robust min/max scaling of an en-face image to float32 [0, 1] (0.5 / 99.5 percentiles, clipped)."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(img, ENFACE_PERCENTILES))
    if not hi > lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resample_enface(image: np.ndarray, shape: tuple[int, int], is_label: bool) -> np.ndarray:
    """Resample a 2D image of the same field of view onto the ``(B, A)`` grid ``shape``.

    Images shrunk along an axis are Gaussian-smoothed first (sigma ``(factor - 1) / 2`` pixels, as
    scikit-image's anti-aliasing) so a 768 x 768 SLO does not alias onto 49 B-scans; labels use
    nearest neighbour (values preserved).
    """
    if tuple(image.shape) == tuple(shape):
        return image
    if not is_label:
        image = np.asarray(image, dtype=np.float32)
        sigma = [max(0.0, (n / m - 1) / 2) for n, m in zip(image.shape, shape)]
        if any(s > 0 for s in sigma):
            image = gaussian_filter(image, sigma, mode="nearest")
    return resample_to_shape(image, tuple(shape), is_label=is_label)  # type: ignore[arg-type]


def _as_label(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = squeeze_2d(arr)
    if arr.ndim != 2:
        raise FPNError(f"{path}: label must be 2D (the en-face plane), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise FPNError(f"{path}: label values must be integers")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise FPNError(f"{path}: label values must lie in 0..255, got {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def read_case(case_files: CaseFiles, info: DatasetInfo, plan: Plan) -> RawCase:
    """Read a case through :mod:`fpnunet.io` and bring everything onto the volume's ``(B, A)`` grid."""
    axis = int(plan.projection_axis)
    channels: list[np.ndarray] = []
    first: Image | None = None
    for i, p in enumerate(case_files.images):
        if p is None:
            raise FPNError(
                f"case {case_files.case}: channel {i} is missing (run fpn_plan_and_preprocess --verify-only)"
            )
        img = read_image(p)
        arr = squeeze_3d(img.array)
        if arr.ndim != 3:
            raise FPNError(f"{p}: volume must be 3D, got shape {img.array.shape}")
        if first is None:
            first = img
            if img.array.ndim != 3:  # exported with extra singleton axes: rebuild a 3D image for the geometry
                first = Image(arr, volume_spacing(img), tuple(img.origin[:3]) + (0.0,) * (3 - len(img.origin[:3])),
                              tuple(np.eye(3).ravel()), img.path)
        channels.append(to_bda(arr, axis))
    assert first is not None
    geometry = enface_geometry(first, axis)
    grid = (int(channels[0].shape[0]), int(channels[0].shape[2]))
    label = None
    if case_files.label is not None:
        label = _as_label(read_image(case_files.label).array, case_files.label)
        label = resample_enface(label, grid, is_label=True)
    enface = {}
    for mod, p in sorted(case_files.enface.items()):
        arr = squeeze_2d(read_image(p).array)
        if arr.ndim != 2:
            raise FPNError(f"{p}: en-face image ({mod}) must be 2D, got shape {arr.shape}")
        enface[mod] = scale_enface(resample_enface(arr, grid, is_label=False))
    spacing = volume_spacing(first)
    return RawCase(
        case=case_files.case,
        channels=channels,
        geometry=geometry,
        enface=enface,
        label=label,
        raw_shape=tuple(int(s) for s in first.array.shape),
        spacing_bda=tuple(float(spacing[i]) for i in bda_order(axis)),  # type: ignore[arg-type]
    )


def load_case_raw(
    case_files: CaseFiles, info: DatasetInfo, plan: Plan
) -> tuple[list[np.ndarray], EnfaceGeometry, dict[str, np.ndarray], np.ndarray | None]:
    """Read a raw case: channels ``(B, D, A)`` (projection axis moved to 1), the en-face geometry,
    en-face images float32 ``(B, A)`` in [0, 1] and the label uint8 ``(B, A)`` (or ``None``).

    En-face images and labels on another pixel grid are resampled onto ``(B, A)``.
    """
    r = read_case(case_files, info, plan)
    return r.channels, r.geometry, r.enface, r.label


def class_locations(
    label: np.ndarray, classes: list[int], case: str, max_per_class: int = MAX_CLASS_LOCATIONS
) -> dict[str, list[list[int]]]:
    """Up to ``max_per_class`` ``[b, a]`` pixels of each foreground class of ``label`` ``(B, A)``,
    sampled without replacement with a per-case seed (every class key present, possibly empty)."""
    rng = np.random.default_rng(case_seed(case, 1))
    out: dict[str, list[list[int]]] = {}
    for v in classes:
        idx = np.argwhere(label == v)
        if len(idx) > max_per_class:
            idx = idx[np.sort(rng.choice(len(idx), max_per_class, replace=False))]
        out[str(int(v))] = idx.astype(int).tolist()
    return out
