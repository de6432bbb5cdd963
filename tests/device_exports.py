"""Device exports written by the tests (no real patient data exists here): HEYEX VOL through eyepy's
own VOL format definition, HEYEX XML + PNG images, DICOM OPT + OP through pydicom.

Every export carries a known localizer: the synthetic case's SLO (quantised to uint8) placed into
a larger noisy localizer, B-scan ``b`` on localizer row ``ROW0 + (B - 1 - b) * STEP`` (bottom to
top, like Spectralis), A-scan ``a`` on column ``COL0 + a``; one localizer pixel is the lateral
pixel size, so the SLO resampled onto the en-face grid must equal ``slo_u8`` exactly.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpnunet.synthetic.case import generate_case

PATIENT = {"last": "Mustermann", "first": "Erika", "id": "PID4711X", "dob": "1950-01-02", "serial": "SN-998877"}
SHAPE = (8, 64, 32)
STEP, ROW0, COL0 = 2, 5, 4
LOC_SHAPE = (30, 44)
S_A, S_D = 0.0117, 0.0039  # lateral, axial mm per pixel (Spectralis-like)


@dataclass
class Truth:
    """What the importer must recover."""

    volume_u8: np.ndarray  # (B, D, A)
    slo_u8: np.ndarray  # (B, A)
    label: np.ndarray  # (B, A) uint8 (the synthetic GA label)
    localizer: np.ndarray  # (rows, cols) uint8
    positions: np.ndarray  # (B, 2, 2) mm, (x, y) start and end
    spacing: tuple[float, float, float] = (STEP * S_A, S_D, S_A)
    patient: dict = field(default_factory=lambda: dict(PATIENT))


def make_truth(seed: int = 0, shape: tuple[int, int, int] = SHAPE, right_eye: bool = True,
               offset: tuple[float, float] = (0.0, 0.0), loc_shape: tuple[int, int] = LOC_SHAPE,
               texture: float = 0.0) -> Truth:
    """A synthetic case, its SLO inside a larger localizer, and the B-scan positions (mm).

    ``offset`` ``(x, y)`` in localizer pixels shifts the positions (e.g. outside the localizer);
    ``texture`` > 0 smooths the localizer's random background with that Gaussian sigma (pixels).
    """
    cs = generate_case(shape, np.random.default_rng(seed), right_eye=right_eye)
    vol = np.round(cs.volume * 255).astype(np.uint8)
    slo = np.round(np.clip(cs.enface["SLO"], 0, 1) * 255).astype(np.uint8)
    n_b, _, n_a = shape
    rng = np.random.default_rng(seed + 100)
    loc = rng.integers(0, 256, loc_shape).astype(np.float64)
    if texture > 0:
        from scipy.ndimage import gaussian_filter

        loc = gaussian_filter(loc, texture)
        loc = (loc - loc.min()) / np.ptp(loc) * 255
    rows = [ROW0 + (n_b - 1 - b) * STEP for b in range(n_b)]
    for b, r in enumerate(rows):
        loc[r, COL0:COL0 + n_a] = slo[b]
    for b in range(n_b - 1):  # rows between two B-scans: linear in between (any values would do)
        r_lo = rows[b + 1]
        for k in range(1, STEP):
            w = k / STEP
            loc[r_lo + k, COL0:COL0 + n_a] = (1 - w) * slo[b + 1] + w * slo[b]
    loc = np.round(loc).astype(np.uint8)
    pos = np.array([[[(COL0 + offset[0]) * S_A, (r + offset[1]) * S_A],
                     [(COL0 + n_a - 1 + offset[0]) * S_A, (r + offset[1]) * S_A]] for r in rows])
    return Truth(vol, slo, cs.label.astype(np.uint8), loc, pos)


@contextlib.contextmanager
def _int_dates():
    """eyepy 0.21.0's IntDate adapter returns a float for the 64-bit exam time when building; round it."""
    from eyepy.io import utils

    orig = utils.IntDate._encode
    utils.IntDate._encode = lambda obj, ctx, path: int(round(orig(obj, ctx, path)))
    try:
        yield
    finally:
        utils.IntDate._encode = orig


def write_vol(path: Path, t: Truth, laterality: str = "OD", scan_pattern: int = 3, patient: dict | None = None,
              visit: str = "2021-05-06") -> Path:
    """A HEYEX VOL file built with eyepy's own ``vol_format`` (the struct its ``HeVolWriter`` builds:
    that writer fails on every volume in eyepy 0.21.0, see docs/import.md)."""
    from eyepy.core.utils import to_vol_intensity
    from eyepy.io.he.vol_reader import vol_format

    p = patient or t.patient
    n_b, n_d, n_a = t.volume_u8.shape
    bscans = [dict(bscan_hdr_size=256, start_x=float(t.positions[b, 0, 0]), start_y=float(t.positions[b, 0, 1]),
                   end_x=float(t.positions[b, 1, 0]), end_y=float(t.positions[b, 1, 1]), num_seg=0, quality=30.0,
                   shift=0, iv_transformation=[0.0] * 6, layer_segmentations=np.zeros((0, n_a), np.float32),
                   data=to_vol_intensity(t.volume_u8[b])) for b in range(n_b)]
    header = dict(version="HSF-OCT-103", size_x=n_a, n_bscans=n_b, size_y=n_d, scale_x=t.spacing[2],
                  distance=t.spacing[0], scale_y=t.spacing[1], size_x_slo=t.localizer.shape[1],
                  size_y_slo=t.localizer.shape[0], scale_x_slo=S_A, scale_y_slo=S_A, field_size_slo=30,
                  scan_focus=0.0, scan_position=laterality, exam_time=f"{visit}T10:11:12", scan_pattern=scan_pattern,
                  bscan_hdr_size=256, id="4242", reference_id="", pid=31337, patient_id=p["id"],
                  dob=f"{p['dob']}T00:00:00", vid=0, visit_id="", visit_date=f"{visit}T00:00:00", grid_type=0,
                  grid_offset=0, grid_type1=0, grid_offset1=0, prog_id="", localizer=t.localizer, bscans=bscans)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _int_dates():
        path.write_bytes(vol_format.build(header))
    return path


def _date_xml(iso: str) -> str:
    y, m, d = iso.split("-")
    return f"<Date><Year>{int(y)}</Year><Month>{int(m)}</Month><Day>{int(d)}</Day></Date>"


def write_xml(folder: Path, t: Truth, laterality: str = "R", patient: dict | None = None,
              positions: np.ndarray | None = None, visit: str = "2021-05-06") -> Path:
    """A HEYEX XML export: ``folder/export.xml`` + one PNG per B-scan + the localizer PNG."""
    import imageio.v3 as iio

    p = patient or t.patient
    pos = t.positions if positions is None else positions
    folder.mkdir(parents=True, exist_ok=True)
    iio.imwrite(folder / "loc.png", t.localizer)
    n_b, n_d, n_a = t.volume_u8.shape
    images = [f"""<Image><ID>1</ID><ImageType><Type>LOCALIZER</Type></ImageType>
<OphthalmicAcquisitionContext><Width>{t.localizer.shape[1]}</Width><Height>{t.localizer.shape[0]}</Height>
<ScaleX>{S_A}</ScaleX><ScaleY>{S_A}</ScaleY><Angle>30</Angle><Focus>0.5</Focus></OphthalmicAcquisitionContext>
<ImageData><ExamURL>C:\\HEYEX\\export\\loc.png</ExamURL></ImageData></Image>"""]
    for b in range(n_b):
        iio.imwrite(folder / f"b{b:03d}.png", t.volume_u8[b])
        (sx, sy), (ex, ey) = (map(float, q) for q in pos[b])
        images.append(f"""<Image><ID>{b + 2}</ID><ImageType><Type>OCT</Type></ImageType>
<OphthalmicAcquisitionContext><Width>{n_a}</Width><Height>{n_d}</Height><ScaleX>{t.spacing[2]}</ScaleX>
<ScaleY>{t.spacing[1]}</ScaleY><Start><Coord><X>{sx!r}</X><Y>{sy!r}</Y></Coord></Start>
<End><Coord><X>{ex!r}</X><Y>{ey!r}</Y></Coord></End><ImageQuality>30</ImageQuality></OphthalmicAcquisitionContext>
<ImageData><ExamURL>C:\\HEYEX\\export\\b{b:03d}.png</ExamURL></ImageData></Image>""")
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<HEDX><BODY><SWVersion><Version>6.16</Version></SWVersion>
<Patient><ID>31337</ID><PatientID>{p['id']}</PatientID><LastName>{p['last']}</LastName>
<FirstNames>{p['first']}</FirstNames><Birthdate>{_date_xml(p['dob'])}</Birthdate>
<Study><StudyDate>{_date_xml(visit)}</StudyDate><Series><ID>4242</ID><Laterality>{laterality}</Laterality>
<ReferenceSeries><ID>4242</ID><ExamDate>{_date_xml(visit)}</ExamDate></ReferenceSeries>
<Device><SerialNumber>{p['serial']}</SerialNumber></Device>
{''.join(images)}
</Series></Study></Patient></BODY></HEDX>
"""
    (folder / "export.xml").write_text(xml)
    return folder / "export.xml"


def write_dicom(folder: Path, t: Truth, laterality: str = "L", patient: dict | None = None,
                stem: str = "scan", opt_too: bool = True, frame_of_reference: str = "") -> tuple[Path, Path]:
    """DICOM Ophthalmic Tomography (``stem_opt.dcm``) + Ophthalmic Photography 8 bit (``stem_op.dcm``);
    ``opt_too=False``: only the OP image (``t.localizer``), e.g. a FAF of the same eye;
    ``frame_of_reference``: a FrameOfReferenceUID both carry (default: none)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from fpnunet.importer.dicom import OP_SOP_CLASSES, OPT_SOP_CLASS

    p = patient or t.patient
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()

    def base(sop_class: str, arr: np.ndarray, modality: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName = f"{p['last']}^{p['first']}"
        ds.PatientID = p["id"]
        ds.PatientBirthDate = p["dob"].replace("-", "")
        ds.DeviceSerialNumber = p["serial"]
        ds.StudyDate = "20210506"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        if frame_of_reference:
            ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality = modality
        ds.ImageLaterality = laterality
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.Rows, ds.Columns = int(arr.shape[-2]), int(arr.shape[-1])
        ds.PixelData = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
        return ds

    op = base(OP_SOP_CLASSES[0], t.localizer, "OP")
    op.PixelSpacing = [S_A, S_A]
    if opt_too is False:
        op.save_as(folder / f"{stem}_op.dcm", enforce_file_format=True)
        return folder / f"{stem}_op.dcm", folder / f"{stem}_op.dcm"
    opt = base(OPT_SOP_CLASS, t.volume_u8, "OPT")
    n_b = t.volume_u8.shape[0]
    opt.NumberOfFrames = n_b
    opt.SharedFunctionalGroupsSequence = [Dataset()]
    pm = Dataset()
    pm.PixelSpacing = [t.spacing[1], t.spacing[2]]
    pm.SliceThickness = t.spacing[0]
    opt.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = [pm]
    frames = []
    for b in range(n_b):
        loc = Dataset()
        loc.ReferencedSOPClassUID = op.SOPClassUID
        loc.ReferencedSOPInstanceUID = op.SOPInstanceUID
        (sx, sy), (ex, ey) = t.positions[b] / S_A  # mm -> localizer pixels; DICOM (row, col), corner at 0
        loc.ReferenceCoordinates = [sy + 0.5, sx + 0.5, ey + 0.5, ex + 0.5]
        loc.OphthalmicImageOrientation = "LINEAR"
        g = Dataset()
        g.OphthalmicFrameLocationSequence = [loc]
        frames.append(g)
    opt.PerFrameFunctionalGroupsSequence = frames
    paths = folder / f"{stem}_opt.dcm", folder / f"{stem}_op.dcm"
    opt.save_as(paths[0], enforce_file_format=True)
    op.save_as(paths[1], enforce_file_format=True)
    return paths


def make_faf(t: Truth, angle_deg: float = 4.0, shift_px: tuple[float, float] = (3.0, -2.0),
             scale: float = 1.03) -> tuple[np.ndarray, object]:
    """A "FAF" of the same eye: the localizer seen through a known affine map and a non-linear
    intensity change (inverted, gamma). Returns ``(uint8 image, transform FAF pixel -> localizer pixel)``."""
    import SimpleITK as sitk

    loc = sitk.GetImageFromArray(t.localizer.astype(np.float32))
    centre = [(n - 1) / 2 for n in loc.GetSize()]
    tr = sitk.AffineTransform(2)
    a = np.radians(angle_deg)
    tr.SetMatrix([scale * np.cos(a), -scale * np.sin(a), scale * np.sin(a), scale * np.cos(a)])
    tr.SetCenter(centre)
    tr.SetTranslation(shift_px)
    warped = sitk.GetArrayFromImage(sitk.Resample(loc, loc, tr, sitk.sitkLinear, 0.0))
    faf = 255 * (1 - warped / 255) ** 1.5
    return np.round(faf).astype(np.uint8), tr


def write_topcon(path: Path, volume: np.ndarray, kind: str = "FDA", eye: int = 0, patient_id: str = "PID4711X",
                 names: tuple[str, str] = ("Erika", "Mustermann"), dob: tuple[int, int, int] = (1950, 1, 2),
                 serial: str = "SN-998877", visit: tuple[int, ...] = (2021, 5, 6, 10, 11, 12),
                 size_mm: tuple[float, float] = (6.0, 6.0), axial_um: float = 3.5,
                 fundus: np.ndarray | None = None, box: tuple[int, int, int, int] | None = None) -> Path:
    """A Topcon FDA (B-scans as JPEG 2000, lossless) or FDS (uint16 B-scans) file in the chunk layout
    fpnunet's reader reads (see fpnunet/importer/topcon.py); ``volume`` is ``(B, depth, A)``.
    ``box``: where the scan lies on ``fundus`` (x0, y0, x1, y1 fundus pixels), written as FDA
    ``@REGIST_INFO`` (a decoy box on the tracking image after it) or FDS ``@REGIST_SCAN_02`` (a decoy box
    on the colour image before it), as the real files lay them out."""
    import io
    import struct

    from PIL import Image

    def chunk(name: str, payload: bytes) -> bytes:
        return bytes([len(name)]) + name.encode() + struct.pack("<I", len(payload)) + payload

    def j2k(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG2000", irreversible=False)
        return buf.getvalue()

    def text(s: str, n: int) -> bytes:
        return s.encode().ljust(n, b"\0")

    n_b, n_d, n_a = volume.shape
    out = b"FOCT" + kind.encode() + struct.pack("<II", 1, 1001)
    out += chunk("@HW_INFO_03", text("3DOCT-TEST", 16) + text(serial, 16) + text(serial + "S", 16)
                 + bytes(32) + bytes(20))
    out += chunk("@PATIENT_INFO_02", text(patient_id, 32) + text(names[0], 32) + text(names[1], 32) + bytes(8)
                 + bytes([2]) + struct.pack("<HHH", *dob) + bytes(504))
    out += chunk("@CAPTURE_INFO_02", bytes([eye, 2]) + bytes(4) + bytes(100) + struct.pack("<6H", *visit))
    if kind == "FDS":
        out += chunk("@IMG_SCAN_03", struct.pack("<BIIIIBI", 2, n_a, n_d, 16, n_b, 0, volume.size * 2)
                     + np.ascontiguousarray(volume, dtype="<u2").tobytes())
    else:
        body = b"".join(struct.pack("<i", len(j := j2k(np.ascontiguousarray(b, dtype=np.uint8)))) + j for b in volume)
        out += chunk("@IMG_JPEG", struct.pack("<BIIIIII", 2, 0, 0, n_a, n_d, n_b, 0) + body)
    out += chunk("@PARAM_SCAN_04", struct.pack("<III5dBB", 0, 0, 0, size_mm[0], size_mm[1], axial_um, 0, 0, 1, 1))
    if fundus is not None and kind == "FDS":
        rgb = np.repeat(fundus[..., None], 3, axis=2).astype(np.uint8)
        out += chunk("@IMG_OBS", struct.pack("<IIIIBI", fundus.shape[1], fundus.shape[0], 24, 1, 0, rgb.size)
                     + rgb.tobytes())
    elif fundus is not None:
        out += chunk("@IMG_FUNDUS", struct.pack("<IIII", fundus.shape[1], fundus.shape[0], 24, 1) + b"J2K\0"
                     + b"\0\0\0\0" + j2k(fundus.astype(np.uint8)))
    if box is not None:
        decoy = struct.pack("<4I", 1, 2, 3 * box[2], 3 * box[3])
        if kind == "FDS":
            out += chunk("@REGIST_SCAN_02", decoy + struct.pack("<4I", *box))
        else:
            out += chunk("@REGIST_INFO", bytes(9) + struct.pack("<4I", *box) + text("3.21.000.00", 32) + decoy
                         + struct.pack("<4d", 0.5, 0.5, 0.5, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + b"\0")
    return path
