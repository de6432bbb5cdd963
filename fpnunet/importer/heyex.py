"""Readers through eyepy: Heidelberg HEYEX VOL, HEYEX XML and E2E -> :class:`Scan` (Topcon: :mod:`.topcon`).

All three go through one path (:func:`scan_from_eyevolume`); only the header facts eyepy does not
put into its ``EyeVolume`` (patient ids, scan pattern) are read per format.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.scan import Scan, iso_date, laterality_of, require

MM_PER_DEGREE = 0.288
"""Retinal mm per visual degree assumed where a device gives positions in degrees (E2E):
Heidelberg's standard eye (30 degrees ~ 8.6 mm). Recorded in the report as an assumption."""

_VOL_PATTERNS = {1: "a single line scan", 2: "a circular scan", 5: "a radial (star) scan"}


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # never the full path: folders may be named after the patient
        return f"{type(exc).__name__}: {exc.strerror}" + (f": {Path(str(exc.filename)).name}" if exc.filename else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _eyepy():
    import logging

    logging.getLogger("eyepy").setLevel(logging.ERROR)  # its warnings (layer names, spacing) are not ours
    ep = require("eyepy", "reading Heidelberg exports")
    return ep, f"eyepy {getattr(ep, '__version__', '?')}"


def scan_from_eyevolume(ev, path: Path, fmt: str, reader: str, patient_key: str, identifiers: list[str],
                        patient_id: str = "", series: str = "", mm_per_degree: float = MM_PER_DEGREE) -> Scan:
    """A :class:`Scan` from an eyepy ``EyeVolume`` (data ``(n_bscans, axial, ascans)``)."""
    meta = ev.meta
    data = np.asarray(ev.data)
    if data.ndim != 3 or min(data.shape) < 1:
        raise FPNError(f"{path}: the volume has shape {data.shape}, expected (B-scans, depth, A-scans)")
    unit = str(meta.get("scale_unit", "mm"))
    spacing: tuple[float | None, float, float]
    if unit == "mm":
        spacing = (float(meta["scale_z"]) if meta.get("scale_z") else None, float(meta["scale_y"]),
                   float(meta["scale_x"]))
    else:  # E2E: no mm scale in the header; lateral and B-scan spacing come from the positions
        axial = [bm.get("scale_y") for bm in meta["bscan_meta"][:1]]
        if not axial or not axial[0] or not 1e-4 < float(axial[0]) < 0.05:
            raise FPNError(f"{path}: the header gives no axial pixel size in mm (scale unit {unit!r})")
        spacing = (None, float(axial[0]), None)  # type: ignore[assignment]
    positions = None
    pos_unit = "mm"
    bms = meta.get("bscan_meta") or []
    if len(bms) == data.shape[0]:
        try:
            positions = np.array([[bm["start_pos"], bm["end_pos"]] for bm in bms], dtype=np.float64)
            pos_unit = str(bms[0].get("pos_unit", "mm"))
        except (KeyError, TypeError, ValueError):
            positions = None
        if positions is not None and (not np.all(np.isfinite(positions)) or np.ptp(positions) == 0):
            positions = None
    loc = getattr(ev, "localizer", None)
    loc_arr = loc_sp = None
    origin = (0.0, 0.0)
    modality = "SLO"
    if loc is not None and getattr(loc, "data", None) is not None:
        loc_arr = np.asarray(loc.data)
        if loc_arr.ndim == 3:
            loc_arr = loc_arr[..., :3].mean(axis=-1)
        lm = loc.meta
        loc_sp = (float(lm["scale_y"]), float(lm["scale_x"]))
        if str(lm.get("scale_unit", "mm")) == "°":
            origin = (-15.0, -15.0)  # eyepy: degrees with the origin at the centre of a 30 degree field
        modality = str(lm.get("modality") or "SLO")
    lat = laterality_of(meta.get("laterality") or (loc.meta.get("laterality") if loc is not None else ""))
    return Scan(source=path, format=fmt, reader=reader, volume=data, spacing=spacing, laterality=lat,
                positions=positions, positions_unit=pos_unit, localizer=loc_arr, localizer_spacing=loc_sp,
                localizer_origin=origin, localizer_modality=modality, patient_key=patient_key,
                patient_id=patient_id, visit_date=iso_date(meta.get("visit_date") or meta.get("exam_time")),
                series=series, mm_per_unit=1.0 if pos_unit == "mm" else mm_per_degree,
                identifiers=[str(i) for i in identifiers if i])


def read_vol(path: Path) -> list[Scan]:
    ep, version = _eyepy()
    from eyepy.io.he.vol_reader import HeVolReader

    try:
        reader = HeVolReader(path)
    except Exception as exc:  # construct raises many kinds on a truncated or foreign file
        raise FPNError(f"{path}: not a readable HEYEX VOL file ({_why(exc)})") from None
    p = reader.parsed_file
    if int(p.scan_pattern) in _VOL_PATTERNS:
        raise FPNError(f"{path}: {_VOL_PATTERNS[int(p.scan_pattern)]} (scan pattern {p.scan_pattern}); only "
                       "raster volumes of parallel, equally spaced B-scans can be imported")
    try:
        ev = reader.volume
    except Exception as exc:
        raise FPNError(f"{path}: eyepy cannot build the volume ({_why(exc)})") from None
    pid = str(p.patient_id).strip("\x00 ")
    key = pid if pid and pid.lower() != "unknown" else (f"pid:{p.pid}" if p.pid else "")
    scan = scan_from_eyevolume(ev, path, "heyex-vol", f"{version} HeVolReader", key,
                               [pid, str(p.dob), str(p.pid)], patient_id=pid)
    scan.spacing_source = "header (distance)"
    return [scan]


def _check_image_paths(path: Path, root) -> None:
    """Every image an XML export names (``ExamURL``, read as eyepy reads it: the part after the last
    backslash, beside the XML) must lie inside the export's own folder."""
    folder = path.parent.resolve()
    urls = [(el.text or "").strip() for el in root.iter("ExamURL")]
    for i, url in enumerate(urls):
        name = url.split("\\")[-1]
        target = (path.parent / name).resolve()
        if not name or folder not in target.parents:
            why = "an absolute path" if Path(name).is_absolute() else ("empty" if not name else "a path leading out")
            raise FPNError(f"{path}: image {i + 1} of the export ({why}) lies outside the export's folder; every "
                           "image an XML export names must be inside the folder of its XML file")


def read_xml(path: Path) -> list[Scan]:
    ep, version = _eyepy()
    from eyepy.io.he.xml_reader import HeXmlReader

    try:
        reader = HeXmlReader(path)
        _check_image_paths(path, reader.xml_root)
        ev = reader.volume
    except FPNError:
        raise
    except Exception as exc:
        raise FPNError(f"{path}: not a readable HEYEX XML export ({_why(exc)})") from None
    pat = reader.patient
    pid = str(pat.get("patient_id") or "").strip()
    name = f"{pat.get('firstname') or ''} {pat.get('lastname') or ''}".strip()
    key = pid or (f"pid:{pat['pid']}" if pat.get("pid") else (f"name:{name}|{pat.get('dob')}" if name else ""))
    ids = [pid, str(pat.get("firstname") or ""), str(pat.get("lastname") or ""), str(pat.get("dob") or ""),
           str(pat.get("pid") or "")]
    return [scan_from_eyevolume(ev, path, "heyex-xml", f"{version} HeXmlReader", key, ids, patient_id=pid)]


def read_e2e(path: Path, mm_per_degree: float = MM_PER_DEGREE) -> list[Scan]:
    """Every series of two or more B-scans in an E2E file (untested here: no E2E file can be written)."""
    ep, version = _eyepy()
    from eyepy.io.he.e2e_reader import HeE2eReader

    scans: list[Scan] = []
    try:
        with HeE2eReader(path) as reader:
            series = list(reader.series)
            for i, s in enumerate(series):
                try:
                    ev = s.get_volume()
                    heyex = s.get_heyex_metadata()
                except Exception:
                    continue  # localizer-only or unreadable series
                if ev.data.ndim != 3 or ev.data.shape[0] < 2:
                    continue
                pat = heyex.get("Patient", {}) or {}
                pid = str(pat.get("Patient ID") or "").strip()
                name = f"{pat.get('First Name') or ''} {pat.get('Surname') or ''}".strip()
                key = pid or (f"name:{name}" if name else "")
                ids = [pid, str(pat.get("First Name") or ""), str(pat.get("Surname") or ""),
                       str(pat.get("Date of Birth") or "")]
                scan = scan_from_eyevolume(ev, path, "heyex-e2e", f"{version} HeE2eReader", key, ids,
                                           patient_id=pid, series=str(i), mm_per_degree=mm_per_degree)
                scan.visit_date = scan.visit_date or iso_date((heyex.get("Container") or {}).get("Series Date"))
                scans.append(scan)
    except FPNError:
        raise
    except Exception as exc:
        raise FPNError(f"{path}: not a readable HEYEX E2E file ({_why(exc)})") from None
    if not scans:
        raise FPNError(f"{path}: no OCT volume of two or more B-scans in this E2E file ({len(series)} series)")
    return scans

