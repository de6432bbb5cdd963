"""The input folder of ``fpn_predict``: its cases (``CASE_XXXX<ending>`` files grouped by case),
and reading, checking and preprocessing each case in a reader thread ahead of the predictor.

Every problem is a :class:`Loaded` with a one-line ``error`` naming the file, never an exception
in the main thread.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet.errors import FPNError
from fpnunet.raw_dataset import DatasetInfo, load_dataset_json, volume_name

if TYPE_CHECKING:  # numpy is imported by the caller after parsing (fast --help)
    import numpy as np

    from fpnunet.io import EnfaceGeometry

    from .predictor import Predictor

__all__ = ["InputCase", "Loaded", "collect_inputs", "min_raw_depth", "load_case", "reader"]

_CHANNEL_SUFFIX_LEN = 5  # "_0000"


@dataclass
class InputCase:
    """One case of the input folder: its channel files, or why it cannot be predicted."""

    case: str
    files: dict[int, list[Path]] = field(default_factory=dict)


@dataclass
class Loaded:
    """A case read and preprocessed for the predictor, or why it could not be."""

    case: str
    volume: np.ndarray | None = None
    geometry: EnfaceGeometry | None = None
    error: str | None = None



def case_of_message(message: str) -> str:
    """The case an input error names (its file name without ending and channel suffix)."""
    from fpnunet.io import strip_ending  # lazy: start-up time

    stem = strip_ending(Path(message.split(": ", 1)[0]).name)
    return stem[:-5] if stem[-5:-4] == "_" and stem[-4:].isdigit() else stem


def collect_inputs(folder: Path) -> tuple[list[InputCase], list[str], list[str]]:
    """Group ``CASE_XXXX<ending>`` files by case (any ending SimpleITK reads).

    Returns the cases, error messages for image files whose name lacks the channel suffix, and
    warnings for files that are not images by their ending (ignored).
    """
    from fpnunet.io import SUPPORTED_ENDINGS, file_ending  # lazy: start-up time

    cases: dict[str, InputCase] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        end = file_ending(p)
        if end not in SUPPORTED_ENDINGS:
            warnings.append(f"{p}: not an image file by its ending (expected one of {', '.join(SUPPORTED_ENDINGS)}); "
                            "ignored")
            continue
        stem = p.name[: -len(end)]
        suffix = stem[-_CHANNEL_SUFFIX_LEN:]
        if len(stem) <= _CHANNEL_SUFFIX_LEN or suffix[0] != "_" or not suffix[1:].isdigit():
            errors.append(f"{p}: file name lacks the channel suffix _0000 (expected CASE_0000{end}, "
                          f"CASE_0001{end} ... one file per channel)")
            continue
        case = stem[:-_CHANNEL_SUFFIX_LEN]
        cases.setdefault(case, InputCase(case)).files.setdefault(int(suffix[1:]), []).append(p)
    return [cases[c] for c in sorted(cases)], errors, warnings


def min_raw_depth(predictor: Predictor) -> int:
    """Smallest usable raw depth within the crop: a quarter of the configuration's depth."""
    return max(1, -(-predictor.config.depth // 4))


def load_case(item: InputCase, predictor: Predictor, folder: Path) -> Loaded:
    """Read, check and preprocess one case (runs in the reader thread)."""
    from fpnunet.io import check_nifti, enface_geometry, file_ending, read_image, to_bda  # lazy: start-up time

    plan = predictor.plan
    n = plan.num_input_channels
    dup = [files for files in item.files.values() if len(files) > 1]
    if dup:
        return Loaded(item.case, error=f"{dup[0][0]}: several files for the same channel: "
                                        f"{', '.join(p.name for p in dup[0])}")
    extra = sorted(k for k in item.files if k >= n)
    if extra:
        f = item.files[extra[0]][0]
        return Loaded(item.case, error=f"{f}: channel {extra[0]} given but the model takes {n} channel(s) "
                                        f"(_0000 to _{n - 1:04d})")
    missing = [k for k in range(n) if k not in item.files]
    if missing:
        first = next(iter(item.files.values()))[0]
        expected = folder / volume_name(item.case, file_ending(first), missing[0])
        return Loaded(item.case, error=f"{expected}: channel {missing[0]} of case {item.case!r} is missing "
                                        f"(the model takes {n} channel(s))")
    axis = plan.projection_axis
    channels = []
    geometry = None
    shape = None
    for k in range(n):
        path = item.files[k][0]
        why, nonfinite = check_nifti(path)  # SimpleITK zero-fills truncated files and NaN/Inf voxels
        if why:
            return Loaded(item.case, error=f"{path}: {why}")
        if nonfinite:
            return Loaded(item.case, error=f"{path}: the volume has {nonfinite} NaN/Inf value(s)")
        try:
            img = read_image(path)
        except FPNError as exc:
            return Loaded(item.case, error=str(exc))
        if img.ndim != 3:
            return Loaded(item.case, error=f"{path}: expected a 3D OCT volume, got a {img.ndim}D image "
                                            f"of shape {img.array.shape}")
        if shape is not None and img.array.shape != shape:
            return Loaded(item.case, error=f"{path}: shape {img.array.shape} differs from channel 0's {shape}")
        shape = img.array.shape
        bda = to_bda(img.array, axis)
        if k == 0:
            geometry = enface_geometry(img, axis)
            depth = bda.shape[1]
            kept = min(depth, plan.depth_crop) if plan.depth_crop > 0 else depth
            need = min_raw_depth(predictor)
            if kept < need:
                return Loaded(item.case, error=(
                    f"{path}: depth {depth} along projection axis {axis} (shape {shape}) is too small: "
                    f"at least {need} rows are needed (a quarter of the model's depth {predictor.config.depth}); "
                    "is this a 3D OCT volume in the orientation the model was trained on?"))
        channels.append(bda)
    from fpnunet.preprocessing.preprocess import preprocess_volume  # lazy: start-up time

    try:
        volume, _ = preprocess_volume(channels, plan, predictor.config)
    except FPNError as exc:
        return Loaded(item.case, error=f"{item.files[0][0]}: {exc}")
    return Loaded(item.case, volume=volume, geometry=geometry)


def reader(
    items: list[InputCase], predictor: Predictor, folder: Path, out: queue.Queue, stop: threading.Event
) -> None:
    for item in items:
        try:
            loaded = load_case(item, predictor, folder)
        except Exception as exc:  # noqa: BLE001  a bug must not hang the main thread: report it there
            loaded = Loaded(item.case, error=f"{folder / item.case}: unexpected {type(exc).__name__}: {exc}")
        while not stop.is_set():
            try:
                out.put(loaded, timeout=0.2)
                break
            except queue.Full:
                continue
        if stop.is_set():
            return



def model_dataset_json(model_info: DatasetInfo | None, raw: Path | None) -> dict[str, Any]:
    """The model folder's dataset.json (``model_info``), completed by the raw dataset's at ``raw``
    (visits and patients of new cases) when one is named and readable."""
    out = dict(model_info.raw) if model_info else {}
    if raw is not None:
        try:
            extra = load_dataset_json(raw).raw
        except FPNError:
            return out
        for key in ("visits", "patients"):
            out[key] = {**extra.get(key, {}), **out.get(key, {})}
    return out
