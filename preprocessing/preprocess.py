"""Preprocessing: raw case -> network-ready arrays in ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/``.

Per case and configuration (``docs/layout.md``)::

    CASE.npy        float32 (C, B, depth, A)  normalised, depth-reduced volume
    CASE_seg.npy    uint8   (B, A)            label map (labelled cases only)
    CASE_<MOD>.npy  float32 (B, A)            en-face image scaled to [0, 1] (per modality present)
    CASE.json       properties; written last, so its presence marks a finished case

Steps for a volume (:func:`preprocess_volume`, shared with inference): detect the retina band
on channel 0, take normalisation statistics on the raw volume (``Plan.normalization``), crop
``Plan.depth_crop`` raw rows centred on the band (padding with the background value past the
volume), z-score, and resample the depth linearly to ``Configuration.depth``. The en-face axes
``(B, A)`` are never resampled.

Re-running skips finished cases whose properties carry the same ``signature`` (a hash of the
settings that shape the output and of the raw files' sizes and modification times), so a case
whose files or plan settings changed is redone; ``clean=True`` redoes everything.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from fpnunet import paths
from fpnunet.atomic import load_json, save_json, save_npy
from fpnunet.errors import FPNError
from fpnunet.io import (
    CaseFiles,
    DatasetInfo,
    EnfaceGeometry,
    Image,
    enface_geometry,
    list_cases,
    load_dataset_json,
    read_image,
    resample_to_shape,
    squeeze_2d,
    to_bda,
)
from fpnunet.plans.fingerprint import bda_order, case_seed, parallel_map, squeeze_3d, volume_spacing
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.preprocessing.depth import background_value, crop_depth, depth_window, resample_depth
from fpnunet.preprocessing.normalization import apply_stats, compute_stats
from fpnunet.retina import detect_retina_band

PREPROCESS_VERSION = 1
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


def _normalised_crop(
    channels: list[np.ndarray], plan: Plan, retina_band: tuple[int, int] | None
) -> tuple[list[np.ndarray], tuple[int, int], tuple[int, int]]:
    """Normalised channels cropped to the depth window: float32 ``(B, crop, A)`` each, band, window."""
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
    cropped, band, window = _normalised_crop(channels, plan, retina_band)
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


# ----------------------------------------------------------------------------- one case
def _case_paths(folder: Path, case: str, modalities: list[str]) -> list[Path]:
    return [folder / f"{case}.npy", folder / f"{case}_seg.npy"] + [folder / f"{case}_{m}.npy" for m in modalities]


def preprocess_case(
    case_files: CaseFiles,
    info: DatasetInfo,
    plan: Plan,
    targets: dict[str, tuple[Configuration, Path]],
    retina_band: tuple[int, int] | None = None,
    signatures: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Preprocess one case into every ``targets[data_identifier] = (configuration, folder)``.

    The raw files are read and normalised once; only the depth resampling is per target. Files
    are written atomically, the properties json last. Returns the properties per identifier.
    """
    raw = read_case(case_files, info, plan)
    case = raw.case
    cropped, band, window = _normalised_crop(raw.channels, plan, retina_band)
    fg = sorted(v for v in plan.labels.values() if v != 0)
    locations = class_locations(raw.label, fg, case) if raw.label is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for ident, (config, folder) in targets.items():
        folder.mkdir(parents=True, exist_ok=True)
        props_path = folder / f"{case}.json"
        props_path.unlink(missing_ok=True)  # unfinished until the new properties land
        data = np.stack([resample_depth(c, int(config.depth)) for c in cropped]).astype(np.float32, copy=False)
        try:
            save_npy(data, folder / f"{case}.npy")
            if raw.label is not None:
                save_npy(raw.label, folder / f"{case}_seg.npy")
            else:
                (folder / f"{case}_seg.npy").unlink(missing_ok=True)
            for mod in plan.enface_modalities:
                if mod in raw.enface:
                    save_npy(raw.enface[mod], folder / f"{case}_{mod}.npy")
                else:
                    (folder / f"{case}_{mod}.npy").unlink(missing_ok=True)
            props = {
                "case": case,
                "labelled": raw.label is not None,
                "enface": sorted(raw.enface),
                "raw_shape": list(raw.raw_shape),
                "shape_bda": [int(s) for s in raw.channels[0].shape],
                "spacing_bda": list(raw.spacing_bda),
                "geometry": raw.geometry.to_dict(),
                "retina_band": [int(band[0]), int(band[1])],
                "crop": [int(window[0]), int(window[1])],
                "class_locations": locations,
                "signature": (signatures or {}).get(ident, ""),
            }
            save_json(props, props_path)
        except OSError as exc:
            raise FPNError(f"case {case}: cannot write to {folder} ({exc})") from None
        out[ident] = props
    return out


@dataclass
class _Task:
    files: CaseFiles
    info: DatasetInfo
    plan: Plan
    targets: dict[str, tuple[Configuration, Path]]
    band: tuple[int, int] | None
    signatures: dict[str, str]


def _run_task(task: _Task) -> tuple[str, list[str]]:
    preprocess_case(task.files, task.info, task.plan, task.targets, task.band, task.signatures)
    return task.files.case, sorted(task.targets)


# ----------------------------------------------------------------------------- dataset
def case_signature(case_files: CaseFiles, plan: Plan, config: Configuration) -> str:
    """Hash of what shapes a case's output: plan settings, target depth and the raw files' stats."""
    files = [p for p in case_files.images if p is not None] + sorted(case_files.enface.values())
    if case_files.label is not None:
        files.append(case_files.label)
    stat = {}
    for p in files:
        st = Path(p).stat()
        stat[Path(p).name] = [st.st_size, st.st_mtime_ns]
    key = {
        "version": PREPROCESS_VERSION,
        "projection_axis": int(plan.projection_axis),
        "normalization": plan.normalization,
        "depth_crop": int(plan.depth_crop),
        "depth": int(config.depth),
        "enface_modalities": list(plan.enface_modalities),
        "files": stat,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _tidy_folder(folder: Path, cases: set[str], modalities: list[str]) -> None:
    """Remove temporary files of an interrupted run and the outputs of cases no longer in the dataset."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".") and p.is_file() and p.suffix in (".npy", ".json"):
            p.unlink(missing_ok=True)
        elif p.suffix == ".json" and p.is_file() and p.stem not in cases:
            p.unlink(missing_ok=True)
            for q in _case_paths(folder, p.stem, modalities):
                q.unlink(missing_ok=True)


def _is_done(props_path: Path, signature: str) -> bool:
    if not props_path.is_file():
        return False
    try:
        return load_json(props_path).get("signature") == signature
    except (ValueError, OSError, AttributeError):
        return False


def preprocess_dataset(
    dataset: str | int,
    plan: Plan,
    config_names: list[str] | None = None,
    num_processes: int | None = None,
    clean: bool = False,
    show_progress: bool = True,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Preprocess every ``imagesTr`` case of ``dataset`` for the configurations ``config_names``
    (default: all of the plan), once per distinct ``data_identifier``.

    Writes into ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/``. Finished cases with an
    unchanged signature are skipped unless ``clean`` (which empties the identifier folders
    first). ``fingerprint`` (optional) supplies the retina bands found during verification.
    Returns ``{data_identifier: {"folder", "written", "skipped", "seconds"}}``.
    """
    name = paths.resolve_dataset(dataset)
    raw = paths.raw_root() / name
    out_root = paths.preprocessed_root() / name
    info = load_dataset_json(raw)
    if num_processes is None:
        num_processes = min(4, os.cpu_count() or 1)
    names = list(config_names) if config_names else list(plan.configurations)
    if not names:
        raise FPNError(f"the plan of {plan.dataset_name} has no configurations to preprocess")
    by_ident: dict[str, Configuration] = {}
    for cname in names:
        config = plan.configuration(cname)
        ident = str(config.data_identifier)
        if not ident or ident in (".", "..") or "/" in ident or "\\" in ident or ident.startswith("."):
            raise FPNError(
                f"plans.json: configuration {cname!r} has data_identifier {ident!r}; it must be a plain folder "
                f"name such as 'depth128'"
            )
        prev = by_ident.get(config.data_identifier)
        if prev is not None and int(prev.depth) != int(config.depth):
            raise FPNError(
                f"plans.json: configurations share data_identifier {config.data_identifier!r} but ask for "
                f"depth {prev.depth} and {config.depth}; give them different data_identifiers"
            )
        by_ident.setdefault(config.data_identifier, config)

    cases = [cf for cf in list_cases(raw, info, "Tr") if cf.images and all(p is not None for p in cf.images)]
    case_names = {cf.case for cf in cases}
    for ident in by_ident:
        folder = out_root / ident
        if clean and folder.exists():
            shutil.rmtree(folder)
        _tidy_folder(folder, case_names, list(plan.enface_modalities))

    summary = {ident: {"folder": str(out_root / ident), "written": 0, "skipped": 0, "seconds": 0.0}
               for ident in by_ident}
    bands = {c: tuple(v["retina_band"]) for c, v in (fingerprint or {}).get("cases", {}).items() if v}
    tasks: list[_Task] = []
    for cf in cases:
        targets: dict[str, tuple[Configuration, Path]] = {}
        sigs: dict[str, str] = {}
        for ident, config in by_ident.items():
            sig = case_signature(cf, plan, config)
            folder = out_root / ident
            if _is_done(folder / f"{cf.case}.json", sig):
                summary[ident]["skipped"] += 1
                continue
            targets[ident] = (config, folder)
            sigs[ident] = sig
        if targets:
            tasks.append(_Task(cf, info, plan, targets, bands.get(cf.case), sigs))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for _, idents in parallel_map(_run_task, tasks, num_processes, show_progress, desc="preprocess"):
        for ident in idents:
            summary[ident]["written"] += 1
    seconds = time.perf_counter() - t0
    for ident in summary:
        summary[ident]["seconds"] = seconds
    return summary
