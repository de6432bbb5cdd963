"""DICOM reader (pydicom): Ophthalmic Tomography (OPT) volumes with their Ophthalmic Photography (OP)
localizer.

An OPT instance is multi-frame, one frame per B-scan (``Rows`` = depth, ``Columns`` = A-scans).
Pixel size: ``PixelMeasuresSequence`` (shared or per-frame functional group) ``PixelSpacing`` =
(axial, lateral) mm; B-scan distance in the order of :func:`bscan_distance`, else from the frame
positions on the localizer.
Positions: per-frame ``OphthalmicFrameLocationSequence`` ``ReferenceCoordinates`` = (row, column)
of the start and end of the B-scan on the referenced OP image (``ReferencedSOPInstanceUID``),
pixel coordinates with the top-left corner of the first pixel at (0, 0) (so a pixel's centre is
at +0.5); the OP image's ``PixelSpacing`` (row, column) mm turns them into mm.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.scan import Scan, iso_date, laterality_of, require

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
OP_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2")


PHOTO_AS_OPT = ("its SOP class says Ophthalmic Tomography, but it holds one 2D image (Modality OP): an "
                "ophthalmic photograph with the wrong SOP class, not an OCT volume")
logger = logging.getLogger(__name__)


def _pydicom():
    pd = require("pydicom", "reading DICOM exports")
    return pd, f"pydicom {pd.__version__}"


@contextlib.contextmanager
def _quiet(path: Path, notes: list[str] | None = None):
    """pydicom's (multi-line) warnings go to the log and, first line only, to ``notes``; never to the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        first = str(w.message).strip().splitlines()[0][:160] if str(w.message).strip() else w.category.__name__
        logger.info("%s: pydicom: %s", path.name, str(w.message))
        if notes is not None and f"pydicom: {first}" not in notes:
            notes.append(f"pydicom: {first}")


def read_header(path: Path):
    """The dataset without pixel data, or a one-line :class:`FPNError`."""
    pd, _ = _pydicom()
    try:
        with _quiet(path):
            return pd.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise FPNError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {str(exc)[:120]})") from None


def sop_class(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(ds, "SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")


def kind_of(ds) -> str:
    """``"opt"``, ``"op"``, ``"opt-photo"`` (OPT SOP class on a photograph: Modality OP) or ``""``
    (another SOP class: not imported)."""
    uid = sop_class(ds)
    if uid == OPT_SOP_CLASS:
        return "opt-photo" if str(getattr(ds, "Modality", "")).strip().upper() == "OP" else "opt"
    return "op" if uid in OP_SOP_CLASSES else ""


def _pixels(path: Path, notes: list[str] | None = None):
    pd, _ = _pydicom()
    try:
        with _quiet(path, notes):
            ds = pd.dcmread(path)
            return ds, np.asarray(ds.pixel_array)
    except Exception as exc:
        raise FPNError(f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {str(exc)[:120]})") from None


def sort_dicom(files: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], dict[str, Path],
                                                      list[tuple[Path, str]], int]:
    """``(exports to read, OP localizers by SOPInstanceUID, [(path, one-line problem)], other DICOM files)``.

    OPT volumes are kept; OP images (and photographs whose SOP class wrongly says OPT) are indexed as
    localizers; a file with no SOP class is a problem; other SOP classes (reports, ...) are counted.
    """
    keep: list[tuple[Path, str]] = []
    localizers: dict[str, Path] = {}
    problems: list[tuple[Path, str]] = []
    photos: dict[str, Path] = {}
    referenced: set[str] = set()
    other = 0
    for p, fmt in files:
        if fmt != "dicom":
            keep.append((p, fmt))
            continue
        try:
            ds = read_header(p)
        except FPNError as exc:
            problems.append((p, str(exc)))
            continue
        kind = kind_of(ds)
        if not sop_class(ds):
            problems.append((p, f"{p}: not a readable DICOM file (no SOP class: not a DICOM image)"))
        elif kind == "opt":
            keep.append((p, fmt))
            _, ref = _frame_locations(ds, int(getattr(ds, "NumberOfFrames", 1) or 1))
            referenced.add(ref)
        elif kind in ("op", "opt-photo"):
            localizers[str(getattr(ds, "SOPInstanceUID", ""))] = p
            if kind == "opt-photo":
                photos[str(getattr(ds, "SOPInstanceUID", ""))] = p
        else:
            other += 1
    problems += [(p, f"{p}: {PHOTO_AS_OPT}; not imported") for uid, p in photos.items() if uid not in referenced]
    return keep, localizers, problems, other


def _item(seq_owner, name: str):
    seq = getattr(seq_owner, name, None)
    return seq[0] if seq else None


def _pixel_spacing(ds, frame: int = 0) -> tuple[float, float] | None:
    for group in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = getattr(ds, group, None)
        if not seq:
            continue
        g = seq[frame] if group.startswith("PerFrame") and len(seq) > frame else seq[0]
        pm = _item(g, "PixelMeasuresSequence")
        if pm is not None and getattr(pm, "PixelSpacing", None):
            return float(pm.PixelSpacing[0]), float(pm.PixelSpacing[1])
    if getattr(ds, "PixelSpacing", None):
        return float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])
    return None


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _plane_positions(ds) -> float | None:
    """The mean step (mm) between the frames' Plane Position (Patient) points, when they are equally spaced."""
    seq = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    pts = []
    for g in seq:
        pp = _item(g, "PlanePositionSequence")
        if pp is None or len(getattr(pp, "ImagePositionPatient", None) or []) != 3:
            return None
        pts.append([float(v) for v in pp.ImagePositionPatient])
    if len(pts) < 2:
        return None
    steps = np.linalg.norm(np.diff(np.array(pts), axis=0), axis=1)
    mean = float(steps.mean())
    return mean if mean > 0 and np.abs(steps - mean).max() <= 0.05 * mean else None


def bscan_distance(ds) -> tuple[float | None, str]:
    """``(B-scan distance mm, where it came from)``, in this order: ``SpacingBetweenSlices`` of the
    shared Pixel Measures, of the first frame's, of the top level; then ``SliceThickness`` the same
    three ways (where writers such as OCT-Converter's put the B-scan distance); then the step between
    the frames' Plane Position (Patient) points. ``(None, "")``: the B-scan positions on the
    localizer (Ophthalmic Frame Location) give it, or nothing does."""
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = getattr(ds, group, None)
            pm = _item(seq[0], "PixelMeasuresSequence") if seq else None
            v = _positive(getattr(pm, attr, None)) if pm is not None else None
            if v is not None:
                return v, f"{group.removesuffix('Sequence')} PixelMeasures {attr}"
        v = _positive(getattr(ds, attr, None))
        if v is not None:
            return v, attr
    v = _plane_positions(ds)
    return (v, "PlanePositionSequence step between frames") if v is not None else (None, "")


def _frame_locations(ds, n: int) -> tuple[np.ndarray | None, str]:
    """``((n, 2, 2) (row, col) start/end, referenced OP uid)`` or ``(None, "")``."""
    seq = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if not seq or len(seq) != n:
        return None, ""
    coords, ref = [], ""
    for g in seq:
        loc = _item(g, "OphthalmicFrameLocationSequence")
        if loc is None or not getattr(loc, "ReferenceCoordinates", None):
            return None, ""
        orient = str(getattr(loc, "OphthalmicImageOrientation", "LINEAR")).upper()
        if orient not in ("LINEAR", ""):
            return None, f"orientation {orient}"
        c = [float(v) for v in loc.ReferenceCoordinates]
        if len(c) != 4:
            return None, ""
        coords.append([[c[0], c[1]], [c[2], c[3]]])
        ref = ref or str(getattr(loc, "ReferencedSOPInstanceUID", ""))
    return np.array(coords, dtype=np.float64), ref


def identifiers_of(ds) -> list[str]:
    name = str(getattr(ds, "PatientName", "") or "")
    return [name, *name.replace("^", " ").split(), str(getattr(ds, "PatientID", "") or ""),
            str(getattr(ds, "PatientBirthDate", "") or ""), str(getattr(ds, "DeviceSerialNumber", "") or ""),
            str(getattr(ds, "OtherPatientIDs", "") or "")]


def read_opt(path: Path, localizers: dict[str, Path]) -> list[Scan]:
    """One OPT file -> a :class:`Scan`; ``localizers`` maps OP SOPInstanceUIDs to their files."""
    _, version = _pydicom()
    notes: list[str] = []
    ds, px = _pixels(path, notes)
    if kind_of(ds) == "opt-photo":
        raise FPNError(f"{path}: {PHOTO_AS_OPT}")
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if px.ndim == 4:
        px = px[..., :3].mean(axis=-1)
    if px.ndim != 3 or px.shape[0] != n or n < 2:
        raise FPNError(f"{path}: an OCT volume needs two or more B-scan frames; pixel data has shape {px.shape}")
    sp = _pixel_spacing(ds)
    if sp is None:
        raise FPNError(f"{path}: no PixelSpacing (axial, lateral mm) in the functional groups or the header")
    coords, ref = _frame_locations(ds, n)
    if coords is None and ref.startswith("orientation"):
        raise FPNError(f"{path}: B-scans with ophthalmic image {ref} (not LINEAR): only raster volumes can be imported")
    positions = loc = loc_sp = None
    mm_per_unit = 0.0  # positions in pixels of an unknown size: usable for the SLO, not for mm
    if coords is not None:
        loc_sp = (1.0, 1.0)
        if ref and ref in localizers:
            op, loc = _pixels(localizers[ref], notes)
            if kind_of(op) == "opt-photo":
                notes.append("the localizer's SOP class says OPT (a photograph, Modality OP): read as the OP image")
            if loc.ndim == 3:
                loc = loc[..., :3].mean(axis=-1)
            op_sp = _pixel_spacing(op)
            loc_sp, mm_per_unit = (op_sp, 1.0) if op_sp else ((1.0, 1.0), 0.0)
        # (row, col) with the first pixel's corner at 0 -> (x, y) with its centre at 0
        positions = np.stack([(coords[..., 1] - 0.5) * loc_sp[1], (coords[..., 0] - 0.5) * loc_sp[0]], axis=-1)
    sb, sb_from = bscan_distance(ds)
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    name = str(getattr(ds, "PatientName", "") or "").strip()
    key = pid or (f"name:{name}|{getattr(ds, 'PatientBirthDate', '')}" if name else "")
    lat = laterality_of(getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", ""))
    date = iso_date(getattr(ds, "StudyDate", "") or getattr(ds, "AcquisitionDateTime", "")
                    or getattr(ds, "ContentDate", ""))
    return [Scan(source=path, format="dicom-opt", reader=version, volume=px, spacing=(sb, sp[0], sp[1]),
                 laterality=lat, positions=positions, localizer=loc,
                 localizer_spacing=loc_sp if loc is not None else None, mm_per_unit=mm_per_unit,
                 localizer_modality="SLO", patient_key=key, patient_id=pid, visit_date=date,
                 identifiers=identifiers_of(ds), spacing_source=sb_from, notes=notes)]


def referenced_localizer(ds) -> str:
    """The SOPInstanceUID of the OP image an OPT's B-scan positions are on (empty when none)."""
    _, ref = _frame_locations(ds, int(getattr(ds, "NumberOfFrames", 1) or 1))
    return "" if ref.startswith("orientation") else ref
