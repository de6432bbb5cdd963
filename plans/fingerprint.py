"""Dataset verification and fingerprint (``dataset_fingerprint.json``).

:func:`verify_and_fingerprint` checks every case of a raw dataset before any work is done and
raises one :class:`~fpnunet.errors.DatasetError` listing every problem (one line each, naming
the file or case), or returns the fingerprint the planner reads.

It runs in three steps:

1. *structure* (no pixel data): ``dataset.json``, file names in ``imagesTr``/``labelsTr``/
   ``enfaceTr``/``imagesTs``, missing channels, files that belong to no case;
2. *headers* (SimpleITK reads only the image information): dimensionality, shapes of the
   channels, label shapes against the volume's en-face planes, hence the projection axis;
3. *content* (the slow part, one case per task in a process pool): readability, NaN/Inf,
   constant volumes, integer label values listed in ``dataset.json``, and the statistics.

Geometry: a raw volume is read in numpy order and its projection (depth) axis moved to 1, so
shapes and spacings in the fingerprint are ``(B, D, A)``; the en-face plane is ``(B, A)``.

Fingerprint keys (the planner reads them)::

    dataset_name, projection_axis, num_channels, labels, enface_modalities, file_ending,
    num_cases, num_labelled, num_unlabelled, num_test,
    cases: {CASE: {shape, spacing, retina_band, labelled, enface, label_classes,
                   foreground_fraction, intensity: {p00_5, p99_5, mean, std}}},
    median_shape, median_spacing, retina_band_height_p95, retina_band_height_max,
    intensity: {p00_5, p99_5, mean, std}, foreground_fraction_mean

Per-case and dataset intensities are those of channel 0 (the OCT) inside the retina band.
"""
from __future__ import annotations

import gzip
import math
import multiprocessing
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from fpnunet.errors import DatasetError, FPNError
from fpnunet.io import (
    SUPPORTED_ENDINGS,
    CaseFiles,
    DatasetInfo,
    Image,
    file_ending,
    list_cases,
    list_image_files,
    load_dataset_json,
    read_image,
    squeeze_2d,
    strip_ending,
    to_bda,
)
from fpnunet.retina import detect_retina_band

SAMPLES_PER_CASE = 10_000
"""Retina voxels sampled per case for the dataset-level intensity statistics."""

T = TypeVar("T")
R = TypeVar("R")


# ----------------------------------------------------------------------------- small helpers
def squeeze_3d(array: np.ndarray) -> np.ndarray:
    """Drop singleton axes of a volume exported with extra axes, e.g. ``(1, B, D, A)`` -> ``(B, D, A)``.

    Arrays with three or fewer axes are returned unchanged (a ``(1, D, A)`` volume stays 3D).
    """
    if array.ndim > 3:
        squeezed = np.squeeze(array)
        if squeezed.ndim == 3:
            return squeezed
    return array


def volume_spacing(img: Image) -> tuple[float, float, float]:
    """Numpy-order spacing of the 3D volume :func:`squeeze_3d` makes of ``img`` (singleton axes dropped)."""
    shape, spacing = img.array.shape, img.spacing
    if len(shape) > 3 and len(_squeeze_shape(shape, 3)) == 3:
        spacing = tuple(s for n, s in zip(shape, spacing) if n != 1)
    if len(spacing) != 3:
        return (1.0, 1.0, 1.0)
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _squeeze_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Shape-only twin of :func:`squeeze_3d` (``ndim=3``) and :func:`fpnunet.io.squeeze_2d` (``ndim=2``)."""
    if len(shape) > ndim:
        squeezed = tuple(s for s in shape if s != 1)
        if len(squeezed) == ndim:
            return squeezed
    return tuple(shape)


def plane_shape(volume_shape: Sequence[int], axis: int) -> tuple[int, ...]:
    """The en-face plane of a raw 3D shape when numpy ``axis`` is depth (that axis removed)."""
    return tuple(int(s) for i, s in enumerate(volume_shape) if i != axis)


def bda_order(axis: int) -> list[int]:
    """Raw numpy axes in ``(B, D, A)`` order when ``axis`` is depth (what :func:`fpnunet.io.to_bda` does)."""
    order = [i for i in range(3) if i != axis]
    order.insert(1, axis)
    return order


def case_seed(case: str, salt: int = 0) -> int:
    """A stable per-case seed (independent of ``PYTHONHASHSEED``)."""
    return (zlib.crc32(case.encode("utf-8")) + salt) & 0xFFFFFFFF


@dataclass
class Header:
    """Image information read without the pixel data. ``shape``/``spacing`` in numpy order."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    components: int
    pixel_type: str


def read_header(path: str | os.PathLike) -> Header:
    """Read only the header of an image file; :class:`FPNError` naming the file if SimpleITK cannot."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        why = lines[-1].split("ERROR:")[-1].strip() if lines else "unreadable"
        raise FPNError(f"{path}: SimpleITK cannot read this file as an image ({why})") from None
    return Header(
        shape=tuple(int(s) for s in reversed(reader.GetSize())),
        spacing=tuple(float(s) for s in reversed(reader.GetSpacing())),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def check_nifti(path: str | os.PathLike) -> tuple[str | None, int]:
    """``(why the file is incomplete or None, number of NaN/Inf voxels)`` of a ``.nii``/``.nii.gz``;
    ``(None, 0)`` for other formats.

    SimpleITK reads a truncated NIfTI without complaint, filling the missing voxels with zeros
    (an interrupted copy looks like a volume whose last B-scans are black), and it turns NaN and
    Inf voxels into 0. So verification decompresses the file once, compares its length with what
    the header promises and counts the non-finite values of float data itself.
    """
    end = file_ending(path)
    if end not in (".nii", ".nii.gz"):
        return None, 0
    opener = gzip.open if end == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return f"file is truncated or corrupt ({exc})", 0
    if len(data) < 348:
        return f"file is truncated ({len(data)} bytes, less than a NIfTI header)", 0
    for order in "<>":
        size = struct.unpack(order + "i", data[:4])[0]
        if size == 348:
            dims = struct.unpack(order + "8h", data[40:56])
            dtype, bitpix = struct.unpack(order + "2h", data[70:74])
            offset = int(struct.unpack(order + "f", data[108:112])[0])
            break
        if size == 540 and len(data) >= 540:
            dims = struct.unpack(order + "8q", data[16:80])
            dtype, bitpix = struct.unpack(order + "2h", data[12:16])
            offset = int(struct.unpack(order + "q", data[168:176])[0])
            break
    else:
        return None, 0  # not a header we know: leave it to SimpleITK
    n = int(np.prod([max(1, int(d)) for d in dims[1 : 1 + max(0, min(7, dims[0]))]], dtype=np.int64))
    offset = max(offset, size)
    expected = offset + n * max(1, bitpix) // 8
    if len(data) < expected:
        return f"file is truncated: {len(data)} bytes where the header promises {expected}", 0
    bad = 0
    if dtype in _NIFTI_FLOAT_TYPES:
        values = np.frombuffer(data, dtype=order + _NIFTI_FLOAT_TYPES[dtype], count=n, offset=offset)
        bad = int(np.count_nonzero(~np.isfinite(values)))
    return None, bad


def parallel_map(
    func: Callable[[T], R],
    items: Sequence[T],
    num_processes: int = 1,
    show_progress: bool = True,
    desc: str = "",
) -> Iterator[R]:
    """Yield ``func(item)`` for every item, in completion order, with a tqdm bar.

    ``num_processes > 1`` runs a forked process pool (``func`` must be a module-level function
    and the items picklable). The first exception cancels the remaining tasks and is re-raised.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, disable=not show_progress, unit="case", dynamic_ncols=True)
    try:
        if num_processes <= 1 or len(items) <= 1:
            for item in items:
                out = func(item)
                bar.update(1)
                yield out
            return
        ctx = multiprocessing.get_context("fork")
        workers = min(num_processes, len(items))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending: set[Future] = set()
            it = iter(items)
            try:
                # keep at most 2 tasks per worker in flight so results (arrays) do not pile up
                for item in _take(it, 2 * workers):
                    pending.add(pool.submit(func, item))
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        out = fut.result()
                        bar.update(1)
                        yield out
                    for item in _take(it, len(done)):
                        pending.add(pool.submit(func, item))
            except BaseException:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def _take(it: Iterator[T], n: int) -> Iterable[T]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


# ----------------------------------------------------------------------------- structure
@dataclass
class _CaseCheck:
    """What the header step learnt about one ``imagesTr`` case."""

    files: CaseFiles
    ok: bool = True
    raw_shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    fits: list[int] | None = None
    """Axes whose en-face plane equals the label (labelled) or an en-face image (unlabelled)."""
    fit_source: str = ""
    axis_conflict: bool = False
    """Its label / en-face image contradicts the dataset's projection axis (already reported)."""


@dataclass
class _Report:
    raw: Path
    problems: list[str] = field(default_factory=list)

    def rel(self, path: str | os.PathLike) -> str:
        try:
            return str(Path(path).relative_to(self.raw))
        except ValueError:
            return str(path)

    def add(self, msg: str) -> None:
        self.problems.append(msg.replace(str(self.raw) + os.sep, ""))


def _check_images_folder(rep: _Report, info: DatasetInfo, split: str) -> dict[str, dict[int, Path]]:
    """File names and channels of ``images{split}``; returns ``{case: {channel: path}}`` of named files."""
    folder = rep.raw / f"images{split}"
    if not folder.is_dir():
        if split == "Tr":
            rep.add(f"images{split}/: folder is missing (volumes go in imagesTr/CASE_0000{info.file_ending})")
        return {}
    grouped, bad = list_image_files(folder, info.file_ending)
    for p in bad:
        if not p.name.lower().endswith(info.file_ending.lower()):
            rep.add(f"{rep.rel(p)}: file ending does not match dataset.json file_ending {info.file_ending!r}")
        else:
            rep.add(
                f"{rep.rel(p)}: name lacks the channel suffix (expected CASE_0000{info.file_ending}, "
                f"CASE_0001{info.file_ending}, ...)"
            )
    if split == "Tr" and not grouped and not bad:
        rep.add(f"images{split}/: no volumes found (expected files named CASE_0000{info.file_ending})")
    n = info.num_channels
    for case, chans in sorted(grouped.items()):
        for ch, p in sorted(chans.items()):
            if ch >= n:
                rep.add(
                    f"{rep.rel(p)}: channel {ch} of case {case}, but dataset.json channel_names lists "
                    f"only {n} channel(s) {info.channel_names}"
                )
        for ch in range(n):
            if ch not in chans:
                name = info.channel_names.get(str(ch), "?")
                rep.add(
                    f"images{split}/{case}_{ch:04d}{info.file_ending}: missing channel {ch} ({name}) "
                    f"of case {case}"
                )
    return grouped


def _check_side_folder(
    rep: _Report, info: DatasetInfo, folder_name: str, cases: set[str]
) -> None:
    """``labelsTr``/``enfaceTr``: every file must be an image belonging to an ``imagesTr`` case."""
    folder = rep.raw / folder_name
    if not folder.is_dir():
        return
    seen: dict[str, Path] = {}
    mods = sorted(info.enface_modalities, key=len, reverse=True)
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if file_ending(p) not in SUPPORTED_ENDINGS:
            rep.add(f"{rep.rel(p)}: not an image file (supported endings: {', '.join(SUPPORTED_ENDINGS)})")
            continue
        stem = strip_ending(p.name)
        if folder_name.startswith("labels"):
            case, what = stem, "label"
        else:
            mod = next((m for m in mods if stem.endswith(f"_{m}") and len(stem) > len(m) + 1), None)
            if mod is None:
                rep.add(
                    f"{rep.rel(p)}: en-face file names must be CASE_MODALITY{info.file_ending} with MODALITY "
                    f"one of dataset.json enface_modalities {info.enface_modalities}"
                )
                continue
            case, what = stem[: -len(mod) - 1], f"en-face image ({mod})"
        if stem in seen:
            rep.add(f"{rep.rel(p)}: {what} of case {case} is also stored as {rep.rel(seen[stem])}; keep one")
            continue
        seen[stem] = p
        if case not in cases:
            rep.add(
                f"{rep.rel(p)}: {what} of case {case}, which has no volume "
                f"(expected imagesTr/{case}_0000{info.file_ending})"
            )


def _check_headers(rep: _Report, info: DatasetInfo, cf: CaseFiles, axis: int | None) -> _CaseCheck:
    """Dimensionality and shapes from the headers; which projection axes the label / en-face fit."""
    chk = _CaseCheck(cf)
    shapes: list[tuple[Path, tuple[int, ...]]] = []
    for p in cf.images:
        if p is None:
            chk.ok = False  # reported by the structure step
            continue
        try:
            h = read_header(p)
        except FPNError as exc:
            rep.add(str(exc))
            chk.ok = False
            continue
        if "complex" in h.pixel_type:
            rep.add(f"{rep.rel(p)}: volume has complex pixels ({h.pixel_type}); export magnitudes")
            chk.ok = False
        shape = _squeeze_shape(h.shape, 3)
        if len(shape) != 3:
            hint = (" (a single B-scan or an en-face image? volumes go in imagesTr, en-face images in "
                    "enfaceTr, labels in labelsTr)") if len(shape) == 2 else ""
            rep.add(f"{rep.rel(p)}: volume must be 3D, got shape {h.shape}{hint}")
            chk.ok = False
            continue
        if any(s <= 0 or not math.isfinite(s) for s in h.spacing):
            rep.add(f"{rep.rel(p)}: invalid voxel spacing {h.spacing}")
            chk.ok = False
        shapes.append((p, shape))
        if chk.raw_shape is None:
            chk.raw_shape = shape
            chk.spacing = tuple(float(s) for s in (h.spacing if len(h.spacing) == 3 else (1.0, 1.0, 1.0)))
    if len({s for _, s in shapes}) > 1:
        desc = ", ".join(f"{p.name} {s}" for p, s in shapes)
        rep.add(f"case {cf.case}: channels have different shapes: {desc}")
        chk.ok = False

    label_shape = None
    if cf.label is not None:
        try:
            h = read_header(cf.label)
            shape = _squeeze_shape(h.shape, 2)
            if h.components > 1:
                rep.add(
                    f"{rep.rel(cf.label)}: label has {h.components} colour components (RGB?); save it as a "
                    f"single-channel integer image with the values of dataset.json labels"
                )
                chk.ok = False
            elif len(shape) != 2:
                rep.add(f"{rep.rel(cf.label)}: label must be 2D (the en-face plane), got shape {h.shape}")
                chk.ok = False
            else:
                label_shape = shape
        except FPNError as exc:
            rep.add(str(exc))
            chk.ok = False
    enface_shapes: list[tuple[int, ...]] = []
    for mod, p in cf.enface.items():
        try:
            h = read_header(p)
        except FPNError as exc:
            rep.add(str(exc))
            chk.ok = False
            continue
        shape = _squeeze_shape(h.shape, 2)
        if len(shape) != 2:
            rep.add(f"{rep.rel(p)}: en-face image ({mod}) must be 2D, got shape {h.shape}")
            chk.ok = False
        else:
            enface_shapes.append(shape)

    if chk.raw_shape is None or not chk.ok:
        return chk
    vs = chk.raw_shape
    planes = {k: plane_shape(vs, k) for k in range(3)}
    if label_shape is not None:
        fits = [k for k in range(3) if planes[k] == label_shape]
        transposed = [k for k in range(3) if planes[k] == label_shape[::-1]]
        if axis is not None and axis not in fits:
            if fits:
                why = (f"it is the en-face plane of projection_axis {fits[0]}, but dataset.json sets "
                       f"projection_axis {axis}")
            elif axis in transposed:
                why = f"it looks transposed (the en-face plane is {planes[axis]})"
            else:
                why = f"the en-face plane of projection_axis {axis} is {planes[axis]}"
            rep.add(f"{rep.rel(cf.label)}: label shape {label_shape} does not match volume shape {vs}: {why}")
            chk.ok = False
        elif not fits:
            hint = f"; it looks transposed (plane {planes[transposed[0]]})" if transposed else ""
            rep.add(
                f"{rep.rel(cf.label)}: label shape {label_shape} matches no en-face plane of volume shape {vs} "
                f"(removing axis 0, 1, 2 gives {planes[0]}, {planes[1]}, {planes[2]}){hint}"
            )
            chk.ok = False
        else:
            chk.fits, chk.fit_source = fits, "label"
    elif enface_shapes:
        fits_sets = [{k for k in range(3) if planes[k] == s} for s in enface_shapes]
        fits_sets = [s for s in fits_sets if s]
        if fits_sets:
            common = set.intersection(*fits_sets)
            if common:
                chk.fits, chk.fit_source = sorted(common), "en-face image"
    return chk


def _resolve_axis(rep: _Report, info: DatasetInfo, checks: list[_CaseCheck]) -> int | None:
    """Projection axis: dataset.json's int, else the consensus of the cases that identify one."""
    if isinstance(info.projection_axis, int):
        return info.projection_axis
    votes = {c.files.case: (c.fits[0], c.fit_source) for c in checks if c.fits and len(c.fits) == 1}
    if not votes:
        if any(c.ok for c in checks):
            rep.add(
                "dataset.json: cannot tell the projection (depth) axis: no label or en-face image identifies "
                "it (none on the volume's en-face grid, or the volume shape is ambiguous); set "
                '"projection_axis" to 0, 1 or 2 (the numpy axis of the volume that is depth)'
            )
        return None
    count = Counter(a for a, _ in votes.values())
    (axis, n), *rest = count.most_common()
    if rest and rest[0][1] == n:
        rep.add(
            "projection axis inconsistent across cases: "
            + "; ".join(f"axis {a}: {sorted(c for c, (v, _) in votes.items() if v == a)}" for a in sorted(count))
            + '; fix the odd cases or set "projection_axis" in dataset.json'
        )
        return None
    by_case = {c.files.case: c for c in checks}
    for case, (a, src) in sorted(votes.items()):
        if a != axis:
            by_case[case].axis_conflict = True
            rep.add(
                f"case {case}: its {src} fits projection axis {a}, but the other cases ({n} of them) use "
                f"axis {axis}: projection axis inconsistent across cases (volume stored in another "
                f"orientation?)"
            )
    for c in checks:
        if c.fits and len(c.fits) > 1 and axis not in c.fits and c.fit_source == "label":
            c.axis_conflict = True
            rep.add(f"case {c.files.case}: label does not match the en-face plane of projection axis {axis}")
    return axis


# ----------------------------------------------------------------------------- content (workers)
@dataclass
class _CaseTask:
    files: CaseFiles
    axis: int | None
    label_values: tuple[int, ...]
    raw: Path
    samples: int = SAMPLES_PER_CASE


@dataclass
class _CaseResult:
    case: str
    problems: list[str]
    stats: dict[str, Any] | None = None
    sample: np.ndarray | None = None


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


def _inspect_case(task: _CaseTask) -> _CaseResult:
    """Read one case's files, check their content and compute its statistics (runs in a worker)."""
    cf, raw = task.files, task.raw
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
                    unknown = sorted(set(values.tolist()) - set(task.label_values))
                    if unknown:
                        shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                        problems.append(
                            f"{where}: label values {shown} are not in dataset.json labels "
                            f"(allowed: {sorted(task.label_values)})"
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
    if problems or task.axis is None or len(chans) != len(cf.images):
        return _CaseResult(cf.case, problems)

    axis = task.axis
    vol = to_bda(chans[0], axis)
    b, d, a = vol.shape
    if label is not None and label.shape != (b, a):
        problems.append(
            f"{_rel(raw, cf.label)}: label shape {label.shape} does not match the en-face plane {(b, a)} "
            f"of the volume"
        )
        return _CaseResult(cf.case, problems)
    top, bottom = detect_retina_band(vol)
    band = vol[:, top:bottom]
    p_lo, p_hi = np.percentile(band, [0.5, 99.5])
    rng = np.random.default_rng(case_seed(cf.case))
    n = int(task.samples)
    sample = band[rng.integers(0, b, n), rng.integers(0, bottom - top, n), rng.integers(0, a, n)].astype(np.float32)
    stats: dict[str, Any] = {
        "shape": [int(b), int(d), int(a)],
        "spacing": [float(spacing[i]) for i in bda_order(axis)],
        "retina_band": [int(top), int(bottom)],
        "labelled": label is not None,
        "enface": sorted(cf.enface),
        "label_classes": sorted(int(v) for v in np.unique(label)) if label is not None else [],
        "foreground_fraction": float(np.count_nonzero(label) / label.size) if label is not None else None,
        "intensity": {
            "p00_5": float(p_lo),
            "p99_5": float(p_hi),
            "mean": float(band.mean(dtype=np.float64)),
            "std": float(band.std(dtype=np.float64)),
        },
    }
    return _CaseResult(cf.case, problems, stats, sample)


# ----------------------------------------------------------------------------- entry point
def verify_and_fingerprint(
    raw_folder: str | os.PathLike, num_processes: int = 1, show_progress: bool = True
) -> dict[str, Any]:
    """Verify every case of the raw dataset in ``raw_folder`` and return its fingerprint.

    Raises :class:`DatasetError` with one line per problem (naming the file or case) when
    anything is wrong; nothing is written either way.
    """
    raw = Path(raw_folder).absolute()
    if not raw.is_dir():
        raise DatasetError([f"{raw}: dataset folder not found"], header=f"{raw} cannot be verified")
    try:
        info = load_dataset_json(raw)
    except DatasetError:
        raise
    except FPNError as exc:
        raise DatasetError([str(exc)], header=f"{raw} failed verification") from None

    rep = _Report(raw)
    keys = sorted(info.channel_names)
    if keys != [str(i) for i in range(len(keys))]:
        rep.add(f"dataset.json: channel_names keys must be \"0\", \"1\", ... in order; got {keys}")
    too_big = {k: v for k, v in info.labels.items() if not 0 <= v <= 255}
    if too_big:
        rep.add(f"dataset.json: label values must lie in 0..255 (label maps are stored as uint8); got {too_big}")
    if len(set(info.enface_modalities)) != len(info.enface_modalities):
        rep.add(f"dataset.json: enface_modalities has repeated names: {info.enface_modalities}")

    grouped = _check_images_folder(rep, info, "Tr")
    _check_side_folder(rep, info, "labelsTr", set(grouped))
    _check_side_folder(rep, info, "enfaceTr", set(grouped))
    test_grouped = _check_images_folder(rep, info, "Ts")

    explicit = info.projection_axis if isinstance(info.projection_axis, int) else None
    cases = [cf for cf in list_cases(raw, info, "Tr") if cf.case in grouped]
    checks = [_check_headers(rep, info, cf, explicit) for cf in cases]
    for cf in list_cases(raw, info, "Ts") if test_grouped else []:
        if all(p is not None for p in cf.images):
            _check_headers(rep, info, cf, None)
    axis = _resolve_axis(rep, info, checks)

    per_case = max(1000, min(SAMPLES_PER_CASE, 2_000_000 // max(1, len(checks))))
    tasks = [
        _CaseTask(c.files, None if c.axis_conflict else axis, tuple(sorted(info.labels.values())), raw, per_case)
        for c in checks
        if c.ok
    ]
    results: dict[str, _CaseResult] = {}
    for res in parallel_map(_inspect_case, tasks, num_processes, show_progress, desc="verify"):
        results[res.case] = res
    for c in checks:
        if c.files.case in results:
            rep.problems.extend(results[c.files.case].problems)
    if rep.problems:
        raise DatasetError(rep.problems, header=f"{raw} failed verification")
    assert axis is not None
    ordered = [results[c.files.case] for c in checks]
    return _fingerprint(info, raw, axis, ordered, num_test=len(test_grouped))


def _fingerprint(
    info: DatasetInfo, raw: Path, axis: int, results: list[_CaseResult], num_test: int
) -> dict[str, Any]:
    cases = {r.case: r.stats for r in results}
    stats = [r.stats for r in results if r.stats is not None]
    shapes = np.array([s["shape"] for s in stats], dtype=np.float64)
    spacings = np.array([s["spacing"] for s in stats], dtype=np.float64)
    heights = np.array([s["retina_band"][1] - s["retina_band"][0] for s in stats], dtype=np.float64)
    sample = np.concatenate([r.sample for r in results if r.sample is not None])
    fg = [s["foreground_fraction"] for s in stats if s["labelled"]]
    n_lab = sum(1 for s in stats if s["labelled"])
    p_lo, p_hi = np.percentile(sample, [0.5, 99.5])
    return {
        "dataset_name": raw.name,
        "projection_axis": int(axis),
        "num_channels": info.num_channels,
        "labels": dict(info.labels),
        "enface_modalities": list(info.enface_modalities),
        "file_ending": info.file_ending,
        "num_cases": len(stats),
        "num_labelled": n_lab,
        "num_unlabelled": len(stats) - n_lab,
        "num_test": int(num_test),
        "cases": cases,
        "median_shape": [int(round(v)) for v in np.median(shapes, axis=0)],
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "retina_band_height_p95": int(math.ceil(float(np.percentile(heights, 95)))),
        "retina_band_height_max": int(heights.max()),
        "intensity": {
            "p00_5": float(p_lo),
            "p99_5": float(p_hi),
            "mean": float(sample.mean(dtype=np.float64)),
            "std": float(sample.std(dtype=np.float64)),
        },
        "foreground_fraction_mean": float(np.mean(fg)) if fg else 0.0,
    }


def fingerprint_summary(fp: dict[str, Any]) -> str:
    """A few human-readable lines about a fingerprint (printed by ``--verify-only``)."""
    b, d, a = fp["median_shape"]
    sb, sd, sa = fp["median_spacing"]
    lines = [
        f"{fp['dataset_name']}: {fp['num_cases']} training cases ({fp['num_labelled']} labelled, "
        f"{fp['num_unlabelled']} unlabelled), {fp['num_test']} test cases",
        f"  projection (depth) axis of the raw volumes: {fp['projection_axis']}; channels: {fp['num_channels']}",
        f"  median shape (B, D, A): {b} x {d} x {a}; median spacing: {sb:g} x {sd:g} x {sa:g}",
        f"  retina band height: p95 {fp['retina_band_height_p95']} rows, max {fp['retina_band_height_max']} rows",
        f"  labels: {fp['labels']}; mean foreground fraction {fp['foreground_fraction_mean']:.3f}",
    ]
    if fp["enface_modalities"]:
        counts = Counter(m for c in fp["cases"].values() for m in c["enface"])
        lines.append("  en-face images: " + ", ".join(f"{m} {counts.get(m, 0)}" for m in fp["enface_modalities"]))
    return "\n".join(lines)
