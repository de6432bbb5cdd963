"""DICOM reader (pydicom): Ophthalmic Tomography (OPT) volumes with their Ophthalmic Photography (OP)
localizer.

An OPT instance is multi-frame, one frame per B-scan (``Rows`` = depth, ``Columns`` = A-scans).
Pixel size: ``PixelMeasuresSequence`` (shared or per-frame functional group) ``PixelSpacing`` =
(axial, lateral) mm; B-scan distance from ``SpacingBetweenSlices``, else from the frame positions.
Positions: per-frame ``OphthalmicFrameLocationSequence`` ``ReferenceCoordinates`` = (row, column)
of the start and end of the B-scan on the referenced OP image (``ReferencedSOPInstanceUID``),
pixel coordinates with the top-left corner of the first pixel at (0, 0) (so a pixel's centre is
at +0.5); the OP image's ``PixelSpacing`` (row, column) mm turns them into mm.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.scan import Scan, iso_date, laterality_of, require

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
OP_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2")


def _pydicom():
    pd = require("pydicom", "reading DICOM exports")
    return pd, f"pydicom {pd.__version__}"


def read_header(path: Path):
    """The dataset without pixel data, or a one-line :class:`FPNError`."""
    pd, _ = _pydicom()
    try:
        return pd.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise FPNError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {str(exc)[:120]})") from None


def kind_of(ds) -> str:
    """``"opt"``, ``"op"`` or ``""`` (another SOP class: not imported)."""
    meta = getattr(ds, "file_meta", None)
    uid = str(getattr(ds, "SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", ""))
    return "opt" if uid == OPT_SOP_CLASS else ("op" if uid in OP_SOP_CLASSES else "")


def _pixels(path: Path):
    pd, _ = _pydicom()
    try:
        ds = pd.dcmread(path)
        return ds, np.asarray(ds.pixel_array)
    except Exception as exc:
        raise FPNError(f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {str(exc)[:120]})") from None


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


def _between_slices(ds) -> float | None:
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = getattr(ds, group, None)
        pm = _item(seq[0], "PixelMeasuresSequence") if seq else None
        if pm is not None and getattr(pm, "SpacingBetweenSlices", None):
            return float(pm.SpacingBetweenSlices)
    return float(ds.SpacingBetweenSlices) if getattr(ds, "SpacingBetweenSlices", None) else None


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
    ds, px = _pixels(path)
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
            op, loc = _pixels(localizers[ref])
            if loc.ndim == 3:
                loc = loc[..., :3].mean(axis=-1)
            op_sp = _pixel_spacing(op)
            loc_sp, mm_per_unit = (op_sp, 1.0) if op_sp else ((1.0, 1.0), 0.0)
        # (row, col) with the first pixel's corner at 0 -> (x, y) with its centre at 0
        positions = np.stack([(coords[..., 1] - 0.5) * loc_sp[1], (coords[..., 0] - 0.5) * loc_sp[0]], axis=-1)
    sb = _between_slices(ds)
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
                 identifiers=identifiers_of(ds))]
