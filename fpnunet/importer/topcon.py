"""Topcon ``.fda`` and ``.fds`` exports (3D OCT-1000/2000, Maestro, Triton) -> :class:`Scan`.

Both are chunk files: the 15-byte header ``FOCT`` + ``FDA``/``FAA``/``FDS`` + two uint32, then
chunks ``(uint8 name length, name such as @IMG_JPEG, uint32 size, payload)`` until a zero length.
The layout follows the public description of the format (uocte's "Topcon File Format" notes, the
same one OCT-Converter implements); this module is our own reader of it, with numpy's
``frombuffer`` and Pillow's JPEG 2000 decoder, so it needs no package beyond fpnunet's own.

Read (all little endian):

- volume: FDA ``@IMG_JPEG`` (header 25 bytes: uint8 mode, uint32 x6 whose 3rd-5th are width,
  height, B-scans; then per B-scan uint32 size + a JPEG 2000 codestream) or ``@IMG_MOT_COMP_03``;
  FDS ``@IMG_SCAN_03`` or ``@IMG_MOT_COMP_03`` (header 22 bytes: uint8 mode, uint32 width, height,
  bits, B-scans, uint8 format, uint32 size; then uint16 pixels, B-scan by B-scan, row by row);
- spacing: ``@PARAM_SCAN_04`` (3 uint32, then float64 scan width mm, scan height mm, axial
  resolution um) or ``@PARAM_SCAN_02`` (uint8, 5 uint32, then the same three float64):
  lateral = width mm / A-scans, B-scan distance = height mm / B-scans, axial = um / 1000;
- laterality and visit date: ``@CAPTURE_INFO_02`` (uint8 eye 0 = right, 1 = left; uint8 mode;
  uint32; 100-byte label; uint16 year, month, day, hour, minute, second);
- patient: ``@PATIENT_INFO_02`` (32-byte id, 32-byte first name, 32-byte last name, 8-byte
  middle name, uint8 sex, uint16 birth year, month, day);
- device serials: ``@HW_INFO_03``/``_02``/``_01`` (16-byte model, 16-byte serial, 16-byte
  spectrometer serial);
- fundus image: FDA ``@IMG_FUNDUS`` (24-byte header, then JPEG 2000), FDS ``@IMG_OBS`` (21-byte
  header: uint32 width, height, bits, count, uint8 format, uint32 size; then BGR bytes);
- where the OCT scan lies on it (:mod:`.topcon_place`): FDA ``@REGIST_INFO`` (uint8, 2 uint32, then
  the box in fundus pixels as 4 uint32 ``x0, y0, x1, y1``), FDS ``@REGIST_SCAN_02`` (4 uint32 box on
  the colour image, then 4 uint32 box on the ``@IMG_OBS`` image).
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.scan import Scan, iso_date
from fpnunet.importer.topcon_place import place_fundus

MAGIC = b"FOCT"
TYPES = {b"FDA": "topcon-fda", b"FAA": "topcon-fda", b"FDS": "topcon-fds"}


def file_type(head: bytes) -> str | None:
    """``"topcon-fda"``/``"topcon-fds"`` from the first bytes of a file, else ``None``."""
    if head[:4] != MAGIC:
        return None
    return TYPES.get(head[4:7], "topcon-fda")


def chunks(path: Path) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """``(file type, {chunk name: [payload, ...]})``; a one-line :class:`FPNError` on a broken file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FPNError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) < 16 or data[:4] != MAGIC:
        raise FPNError(f"{path}: not a Topcon file (no FOCT header)")
    out: dict[bytes, list[bytes]] = {}
    pos = 15
    while True:
        if pos >= len(data):
            raise FPNError(f"{path}: not a readable Topcon file (cut short: the chunk list has no end)")
        n = data[pos]
        pos += 1
        if n == 0:
            break
        if pos + n + 4 > len(data):
            raise FPNError(f"{path}: not a readable Topcon file (cut short inside a chunk header)")
        name = data[pos:pos + n]
        (size,) = struct.unpack_from("<I", data, pos + n)
        pos += n + 4
        if pos + size > len(data):
            raise FPNError(f"{path}: not a readable Topcon file (chunk {name.decode('latin-1')!r} of {size} bytes "
                           f"runs past the end of the file)")
        out.setdefault(name, []).append(data[pos:pos + size])
        pos += size
    return data[4:7], out


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()


def _jpeg2000(path: Path, raw: bytes, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            return np.asarray(im)
    except Exception as exc:  # Pillow raises several kinds on a broken codestream
        raise FPNError(f"{path}: cannot decode the {what} (JPEG 2000: {type(exc).__name__})") from None


def _raw_uint16(path: Path, c: bytes) -> np.ndarray:
    if len(c) < 22:
        raise FPNError(f"{path}: the OCT image chunk is cut short")
    _, width, height, bits, n, _, size = struct.unpack_from("<BIIIIBI", c, 0)
    if bits != 16 or size != width * height * n * 2 or len(c) < 22 + size:
        raise FPNError(f"{path}: the OCT image chunk holds {len(c) - 22} bytes, not {n} B-scans of "
                       f"{height} x {width} 16-bit pixels")
    return np.frombuffer(c, dtype="<u2", count=width * height * n, offset=22).reshape(n, height, width).copy()


def _volume(path: Path, kind: bytes, ch: dict[bytes, list[bytes]]) -> np.ndarray:
    """``(B, depth, A-scans)`` as stored."""
    if kind != b"FDS" and b"@IMG_JPEG" in ch:
        c = ch[b"@IMG_JPEG"][0]
        if len(c) < 25:
            raise FPNError(f"{path}: the OCT image chunk is cut short")
        width, height, n = struct.unpack_from("<III", c, 9)
        if n < 2:
            raise FPNError(f"{path}: {n} B-scan(s) of {width} A-scans is no volume (need at least 2 B-scans)")
        pos, slices = 25, []
        for b in range(n):
            if pos + 4 > len(c):
                raise FPNError(f"{path}: the OCT image chunk is cut short at B-scan {b} of {n}")
            (size,) = struct.unpack_from("<i", c, pos)
            img = _jpeg2000(path, c[pos + 4:pos + 4 + size], f"B-scan {b}")
            if img.shape != (height, width):
                raise FPNError(f"{path}: B-scan {b} is {img.shape}, the header says {(height, width)}")
            slices.append(img)
            pos += 4 + size
        return np.stack(slices)
    for name in ((b"@IMG_SCAN_03", b"@IMG_MOT_COMP_03") if kind == b"FDS" else (b"@IMG_MOT_COMP_03",)):
        if name in ch:
            c = ch[name][0]
            if len(c) >= 17 and struct.unpack_from("<I", c, 13)[0] < 2:
                (n,), (width,) = struct.unpack_from("<I", c, 13), struct.unpack_from("<I", c, 1)
                raise FPNError(f"{path}: {n} B-scan(s) of {width} A-scans is no volume (need at least 2 B-scans)")
            return _raw_uint16(path, c)
    raise FPNError(f"{path}: no OCT image in this Topcon file (none of @IMG_JPEG, @IMG_SCAN_03, @IMG_MOT_COMP_03)")


def _spacing(path: Path, ch: dict[bytes, list[bytes]], shape: tuple[int, int, int]) -> tuple[float, float, float]:
    if b"@PARAM_SCAN_04" in ch and len(ch[b"@PARAM_SCAN_04"][0]) >= 36:
        x_mm, y_mm, z_um = struct.unpack_from("<ddd", ch[b"@PARAM_SCAN_04"][0], 12)
    elif b"@PARAM_SCAN_02" in ch and len(ch[b"@PARAM_SCAN_02"][0]) >= 45:
        x_mm, y_mm, z_um = struct.unpack_from("<ddd", ch[b"@PARAM_SCAN_02"][0], 21)
    else:
        raise FPNError(f"{path}: no scan size in this Topcon file (no @PARAM_SCAN_04 or @PARAM_SCAN_02)")
    n_b, _, n_a = shape
    return y_mm / n_b, z_um / 1000.0, x_mm / n_a


def _fundus(path: Path, kind: bytes, ch: dict[bytes, list[bytes]]) -> np.ndarray | None:
    """The fundus photograph as a grey image ``(rows, cols)``, or ``None``."""
    if kind != b"FDS" and b"@IMG_FUNDUS" in ch:
        c = ch[b"@IMG_FUNDUS"][0]
        img = _jpeg2000(path, c[24:], "fundus image")
    elif kind == b"FDS" and b"@IMG_OBS" in ch:
        c = ch[b"@IMG_OBS"][0]
        if len(c) < 21:
            return None
        width, height, _, _, _, size = struct.unpack_from("<IIIIBI", c, 0)
        if size != width * height * 3 or len(c) < 21 + size:
            return None
        img = np.frombuffer(c, dtype=np.uint8, count=size, offset=21).reshape(height, width, 3)
    else:
        return None
    img = np.asarray(img, dtype=np.float32)
    return img[..., :3].mean(axis=-1) if img.ndim == 3 else img


def read_topcon(path: Path) -> list[Scan]:
    """One Topcon FDA/FDS file -> a :class:`Scan`; its fundus placed by the registration box when plausible."""
    kind, ch = chunks(path)
    fmt = TYPES.get(kind, "topcon-fda")
    vol = _volume(path, kind, ch)
    spacing = _spacing(path, ch, vol.shape)
    lat, visit = "", ""
    cap = (ch.get(b"@CAPTURE_INFO_02") or [b""])[0]
    if len(cap) >= 118:
        lat = {0: "OD", 1: "OS"}.get(cap[0], "")
        y, mo, d = struct.unpack_from("<HHH", cap, 106)
        visit = iso_date(f"{y:04d}-{mo:02d}-{d:02d}")
    pid, ids = "", []
    pat = (ch.get(b"@PATIENT_INFO_02") or [b""])[0]
    if len(pat) >= 111:
        pid = _text(pat[:32])
        y, mo, d = struct.unpack_from("<HHH", pat, 105)
        ids = [pid, _text(pat[32:64]), _text(pat[64:96]), _text(pat[96:104])]
        if y:
            ids.append(f"{y:04d}-{mo:02d}-{d:02d}")
    for hw in (b"@HW_INFO_03", b"@HW_INFO_02", b"@HW_INFO_01"):
        if hw in ch and len(ch[hw][0]) >= 48:
            ids += [_text(ch[hw][0][16:32]), _text(ch[hw][0][32:48])]
    fundus = _fundus(path, kind, ch)
    from PIL import __version__ as pil

    scan = Scan(source=path, format=fmt, reader=f"fpnunet topcon (Pillow {pil})", volume=vol, spacing=spacing,
                laterality=lat, localizer=fundus, localizer_spacing=None, localizer_modality="fundus",
                patient_key=pid, patient_id=pid, visit_date=visit, identifiers=[i for i in ids if i],
                spacing_source="header @PARAM_SCAN: scan height mm / B-scans")
    if fundus is not None:
        place_fundus(scan, kind, ch, (spacing[0] * vol.shape[0], spacing[2] * vol.shape[2]))
    return [scan]
