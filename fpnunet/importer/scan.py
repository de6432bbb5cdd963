"""What every reader hands over: one OCT raster scan with its localizer and header facts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError


@dataclass
class Scan:
    """One OCT volume read from a device export.

    ``volume``: ``(B, D, A)`` numpy order (B-scans, depth, A-scans), B-scan ``b`` as stored.
    ``spacing``: ``(sB, sD, sA)`` in mm; ``sB`` may be ``None`` when the header does not give it
    (then it comes from the B-scan positions). ``positions``: ``(B, 2, 2)`` start ``(x, y)`` and
    end ``(x, y)`` of each B-scan in the localizer's physical frame (``positions_unit``), or
    ``None``. ``localizer``: 2D image ``(rows, cols)``; ``localizer_spacing`` ``(sy, sx)`` and
    ``localizer_origin`` ``(x, y)`` (the physical point of pixel ``(0, 0)``'s centre) in the same
    unit as the positions. ``identifiers``: every patient/device string read from the header
    (name parts, ids, birth date, serial numbers): used only to make sure none is ever written.
    """

    source: Path
    format: str
    reader: str
    volume: np.ndarray
    spacing: tuple[float | None, float, float]
    laterality: str = ""
    positions: np.ndarray | None = None
    positions_unit: str = "mm"
    localizer: np.ndarray | None = None
    localizer_spacing: tuple[float, float] | None = None
    localizer_origin: tuple[float, float] = (0.0, 0.0)
    localizer_modality: str = "SLO"
    patient_key: str = ""
    """The raw patient identity used for pseudonyms (never written unless --keep-ids)."""
    patient_id: str = ""
    visit_date: str = ""
    """ISO date ``YYYY-MM-DD`` or empty."""
    series: str = ""
    """Which scan of a file holding several (E2E series, DICOM instance), else empty."""
    scan_pattern: str = "raster"
    mm_per_unit: float = 1.0
    """mm per position unit (1 for mm; for degrees the assumed retinal mm per degree)."""
    identifiers: list[str] = field(default_factory=list)
    spacing_source: str = ""
    """Where the B-scan distance came from (``import_report.csv`` ``bscan_distance_from``); empty:
    from the B-scan positions (:func:`~fpnunet.importer.geometry.raster_geometry` says so)."""
    notes: list[str] = field(default_factory=list)
    """Reader remarks for the report's ``notes`` (never a header value)."""
    localizer_note: str = ""
    """Why the localizer, though read, cannot be placed on the en-face grid (then no SLO is written)."""
    localizer_from: str = ""
    """Where the placed localizer comes from (the report's ``slo_from``); empty: the export's localizer
    placed by the B-scan positions in its header."""


def laterality_of(value: object) -> str:
    """``"OD"``, ``"OS"`` or ``""`` from the many ways headers write it (R/L, OD/OS, right/left)."""
    v = str(value or "").strip().upper().rstrip("\x00")
    if v in ("OD", "R", "RIGHT", "RE"):
        return "OD"
    if v in ("OS", "L", "LEFT", "LE"):
        return "OS"
    return ""


def iso_date(value: object) -> str:
    """``YYYY-MM-DD`` from an ISO datetime string, a ``date``/``datetime`` or a DICOM ``YYYYMMDD``."""
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        value = value.isoformat()
    v = str(value).strip()
    if len(v) == 8 and v.isdigit():
        v = f"{v[:4]}-{v[4:6]}-{v[6:]}"
    v = v[:10]
    if len(v) == 10 and v[4] == "-" and v[7] == "-" and v[:4].isdigit() and v[:4] not in ("0001", "1601", "1899"):
        return v
    return ""


def require(module: str, what: str):
    """Import an optional dependency, or a one-line :class:`FPNError` telling how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FPNError(f"{what} needs the Python package {module.split('.')[0]!r}: "
                       "pip install \"fpnunet[import]\" (or pip install eyepy pydicom)") from None
