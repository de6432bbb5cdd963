"""The Topcon fundus image placed on the en-face grid by the registration box the file carries.

A Topcon file says where its OCT scan lies on its fundus image as a box in fundus pixels
``(x0, y0, x1, y1)``: FDA ``@REGIST_INFO`` (after a uint8 and two uint32; the field OCT-Converter
documents as the bounding box in fundus pixels), FDS ``@REGIST_SCAN_02`` (a box on the colour image,
then one on the ``@IMG_OBS`` image; the second is the one for the fundus this reader reads). The
box gives B-scan positions in fundus pixels, the raster convention eyepy uses for Topcon: B-scan 0
runs along the top edge from ``(x0, y0)`` to ``(x1, y0)``, the last one along the bottom edge at
``y1``, A-scan 0 at ``x0``. The usual geometry then places the fundus like any localizer
(:func:`~fpnunet.importer.localizer.register_localizer`).

A box that is missing, of zero size, outside the fundus, of another shape than the scan or that
would make the fundus image implausibly wide is refused with its reason in the report (no SLO is
written, never a wrong one).
"""
from __future__ import annotations

import struct

import numpy as np

from fpnunet.importer.scan import Scan

MAX_FIELD_MM = 30.0
"""Widest fundus image a box may imply (about 100 degrees of retina; a 45-degree photograph spans ~13 mm)."""
MAX_ASPECT_DEVIATION = 0.25
"""Largest relative difference between the box's width/height and the scan's (square fundus pixels)."""
BOX_CHUNKS = {b"FDA": (b"@REGIST_INFO", 9, "@IMG_FUNDUS"), b"FDS": (b"@REGIST_SCAN_02", 16, "@IMG_OBS")}
"""File type -> (registration chunk, byte offset of the fundus box in it, the fundus chunk it refers to)."""

Box = tuple[int, int, int, int]


def read_box(kind: bytes, ch: dict[bytes, list[bytes]]) -> tuple[Box | None, str]:
    """``(box (x0, y0, x1, y1) in fundus pixels, "")`` or ``(None, why there is none)``."""
    name, offset, _ = BOX_CHUNKS.get(kind, BOX_CHUNKS[b"FDA"])
    raw = (ch.get(name) or [b""])[0]
    if not raw:
        return None, f"the file has no {name.decode()} chunk (where the scan lies on the fundus)"
    if len(raw) < offset + 16:
        return None, f"the {name.decode()} chunk is cut short ({len(raw)} bytes)"
    x0, y0, x1, y1 = struct.unpack_from("<4I", raw, offset)
    return (x0, y0, x1, y1), ""


def box_problem(box: Box, fundus_rc: tuple[int, int], size_mm: tuple[float, float]) -> str:
    """Empty when ``box`` is a plausible place for a scan of ``size_mm`` (height along the B-scans,
    width along the A-scans) on a fundus of ``fundus_rc`` (rows, cols) pixels, else why not."""
    x0, y0, x1, y1 = box
    rows, cols = fundus_rc
    where = f"the registration box ({x0}, {y0})-({x1}, {y1})"
    if x1 <= x0 or y1 <= y0:
        return f"{where} has zero or negative size"
    if x1 > cols - 1 or y1 > rows - 1:
        return f"{where} lies outside the {cols} x {rows} fundus image"
    h_mm, w_mm = size_mm
    if not (w_mm > 0 and h_mm > 0):
        return f"{where} cannot be checked: the scan size is {w_mm:.4g} x {h_mm:.4g} mm"
    box_aspect, scan_aspect = (x1 - x0) / (y1 - y0), w_mm / h_mm
    if abs(box_aspect / scan_aspect - 1) > MAX_ASPECT_DEVIATION:
        return (f"{where} is {x1 - x0} x {y1 - y0} fundus pixels, not the shape of the "
                f"{w_mm:.4g} x {h_mm:.4g} mm scan")
    field = max(cols * w_mm / (x1 - x0), rows * h_mm / (y1 - y0))
    if field > MAX_FIELD_MM:
        return (f"{where} would make the {cols} x {rows} fundus image {field:.0f} mm wide "
                f"(more than {MAX_FIELD_MM:.0f} mm): not a box on this image")
    return ""


def box_positions(box: Box, n_b: int) -> np.ndarray:
    """``(B, 2, 2)`` start and end ``(x, y)`` of every B-scan in fundus pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    y = y0 + (y1 - y0) * np.arange(n_b, dtype=np.float64) / (n_b - 1)
    return np.stack([np.stack([np.full(n_b, x0), y], 1), np.stack([np.full(n_b, x1), y], 1)], 1)


def place_fundus(scan: Scan, kind: bytes, ch: dict[bytes, list[bytes]], size_mm: tuple[float, float]) -> None:
    """Give ``scan`` (its fundus already in ``scan.localizer``) B-scan positions on the fundus, or a
    ``localizer_note`` saying why the fundus is not placed."""
    assert scan.localizer is not None
    name, _, fundus_chunk = BOX_CHUNKS.get(kind, BOX_CHUNKS[b"FDA"])
    box, why = read_box(kind, ch)
    if box is not None:
        why = box_problem(box, scan.localizer.shape[:2], size_mm)
    if box is None or why:
        scan.localizer_note = f"the fundus image was read, but not placed: {why}"
        return
    scan.positions = box_positions(box, scan.volume.shape[0])
    scan.positions_unit = "fundus px"
    scan.mm_per_unit = 0.0  # the header's spacing stands; the box only places the fundus
    scan.localizer_spacing = (1.0, 1.0)
    scan.localizer_origin = (0.0, 0.0)
    scan.localizer_from = (f"{fundus_chunk} (grey: mean of its colour channels) placed by the {name.decode()} box "
                           f"({box[0]}, {box[1]})-({box[2]}, {box[3]}) fundus px; B-scan 0 on the box's top edge")
