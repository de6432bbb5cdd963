"""Verification step 3, from the pixel data: readability, NaN/Inf, constant volumes, label values.

:func:`check_case_content` reads one case's files (one case per task in a process pool) and
returns its problems, one line each naming the file, and, when there are none, the arrays the
fingerprint's statistics need. :func:`fpnunet.io.check_nifti` catches what SimpleITK lets through in
NIfTI files (truncated data, NaN/Inf).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.io import Image, check_nifti, read_image, squeeze_2d, to_bda
from fpnunet.plans.geometry import bda_order, squeeze_3d, volume_spacing
from fpnunet.raw_dataset import CaseFiles


@dataclass
class CaseContent:
    """What step 3 found in one case.

    ``volume`` (channel 0, ``(B, D, A)``), ``label`` (int64 ``(B, A)`` or ``None``) and
    ``spacing_bda`` are set only when there are no problems and the projection axis is known.
    """

    case: str
    problems: list[str]
    volume: np.ndarray | None = None
    label: np.ndarray | None = None
    spacing_bda: tuple[float, ...] = (1.0, 1.0, 1.0)


def _rel(raw: Path, p: str | os.PathLike) -> str:
    try:
        return str(Path(p).relative_to(raw))
    except ValueError:
        return str(p)


def _read(raw: Path, p: Path, problems: list[str], what: str) -> Image | None:
    why, nonfinite = check_nifti(p)
    if why:
        problems.append(f"{_rel(raw, p)}: {why}")
        return None
    if nonfinite:
        problems.append(f"{_rel(raw, p)}: {what} has {nonfinite} NaN/Inf value(s)")
        return None
    try:
        return read_image(p)
    except FPNError as exc:
        problems.append(str(exc).replace(str(p), _rel(raw, p)))
        return None
    except (RuntimeError, OSError, ValueError, MemoryError) as exc:
        problems.append(f"{_rel(raw, p)}: cannot be read ({type(exc).__name__}: {exc})")
        return None


def _check_values_finite(arr: np.ndarray, where: str, what: str, problems: list[str]) -> bool:
    if arr.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            problems.append(f"{where}: {what} has {bad} NaN/Inf value(s) of {arr.size}")
            return False
    return True


def check_case_content(
    cf: CaseFiles, axis: int | None, label_values: tuple[int, ...], raw: Path
) -> CaseContent:
    """Read one case's files and check their content (runs in a worker).

    ``axis`` is the projection axis (``None`` when unknown or contradicted by this case: then
    the arrays are not returned); ``label_values`` are the values of dataset.json ``labels``;
    ``raw`` is the dataset folder (problems name files relative to it).
    """
    problems: list[str] = []
    chans: list[np.ndarray] = []
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    for i, p in enumerate(cf.images):
        assert p is not None
        img = _read(raw, p, problems, "volume")
        if img is None:
            continue
        arr = squeeze_3d(img.array)
        if i == 0 and arr.ndim == 3:
            spacing = volume_spacing(img)
        where = _rel(raw, p)
        if arr.ndim != 3:
            problems.append(f"{where}: volume must be 3D, got shape {arr.shape}")
            continue
        if not _check_values_finite(arr, where, "volume", problems):
            continue
        lo, hi = arr.min(), arr.max()
        if lo == hi:
            problems.append(f"{where}: volume is constant (every voxel is {lo}): an empty export?")
            continue
        chans.append(arr)

    label = None
    if cf.label is not None:
        where = _rel(raw, cf.label)
        img = _read(raw, cf.label, problems, "label")
        if img is not None:
            arr = squeeze_2d(img.array)
            if arr.ndim != 2:
                problems.append(f"{where}: label must be 2D (the en-face plane), got shape {arr.shape}")
            elif _check_values_finite(arr, where, "label", problems):
                if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
                    frac = np.unique(arr[arr != np.round(arr)])[:5]
                    problems.append(
                        f"{where}: label values must be integers, found {', '.join(f'{v:g}' for v in frac)}"
                        " (an interpolated or probability map?)"
                    )
                elif arr.dtype.kind not in "iufb":
                    problems.append(f"{where}: label has non-numeric pixel type {arr.dtype}")
                else:
                    values = np.unique(arr).astype(np.int64)
                    unknown = sorted(set(values.tolist()) - set(label_values))
                    if unknown:
                        shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                        problems.append(
                            f"{where}: label values {shown} are not in dataset.json labels "
                            f"(allowed: {sorted(label_values)})"
                        )
                    else:
                        label = arr.astype(np.int64)

    for mod, p in cf.enface.items():
        img = _read(raw, p, problems, f"en-face image ({mod})")
        if img is None:
            continue
        arr = squeeze_2d(img.array)
        where = _rel(raw, p)
        if arr.ndim != 2:
            problems.append(f"{where}: en-face image ({mod}) must be 2D, got shape {arr.shape}")
            continue
        _check_values_finite(arr, where, f"en-face image ({mod})", problems)

    if len({c.shape for c in chans}) > 1:
        problems.append(f"case {cf.case}: channels have different shapes: {[c.shape for c in chans]}")
    if problems or axis is None or len(chans) != len(cf.images):
        return CaseContent(cf.case, problems)

    vol = to_bda(chans[0], axis)
    b, _, a = vol.shape
    if label is not None and label.shape != (b, a):
        problems.append(
            f"{_rel(raw, cf.label)}: label shape {label.shape} does not match the en-face plane {(b, a)} "
            f"of the volume"
        )
        return CaseContent(cf.case, problems)
    spacing_bda = tuple(float(spacing[i]) for i in bda_order(axis))
    return CaseContent(cf.case, problems, vol, label, spacing_bda)
