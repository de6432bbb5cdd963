"""Predictions of DICOM-imported cases back on the device's own localizer (``fpn_export_dicom``).

The private sources map beside the key (:func:`~fpnunet.importer.privacy.sources_map_path`) names,
for every imported case, its export file relative to the import's ``-i`` folder. That file is
re-read with the importer's DICOM reader; the key must give the map's source token for that path
and the file's SHA-256 must still give the case name (so a wrong key or a changed file is
refused). The en-face mask ``(B, A)`` goes onto the OP localizer's pixel grid through the inverse
of the importer's registration (:func:`~fpnunet.importer.localizer.enface_transform`), nearest
neighbour: a localizer pixel takes the label of the en-face pixel it falls in, and stays 0 outside
the scanned area. The output folder (owned here)::

    OUT/CASE_seg.dcm        DICOM Segmentation on the OP image (highdicom)
    OUT/CASE_overlay.png    the localizer with the mask's outline
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fpnunet.errors import FPNError
from fpnunet.importer import privacy
from fpnunet.importer.dataset import file_digest
from fpnunet.importer.detect import find_exports
from fpnunet.importer.dicom import read_header, read_opt, referenced_localizer, sort_dicom
from fpnunet.importer.geometry import mirror_a, raster_geometry
from fpnunet.importer.localizer import enface_transform, localizer_image
from fpnunet.importer.report import read_report, report_file
from fpnunet.importer.scan import Scan

DICOM_FORMAT = "dicom-opt"


def seg_file(out: Path, case: str) -> Path:
    """``OUT/CASE_seg.dcm``: the DICOM Segmentation of a case."""
    return out / f"{case}_seg.dcm"


def overlay_file(out: Path, case: str) -> Path:
    """``OUT/CASE_overlay.png``: the mask's outline on the localizer."""
    return out / f"{case}_overlay.png"


@dataclass
class DicomSource:
    """An imported DICOM case, re-read: the OPT and its OP localizer (paths: never printed), the scan
    and the registration ``(x, y) = affine @ (a, b, 1)``."""

    case: str
    opt: Path
    op: Path
    scan: Scan
    affine: np.ndarray
    mirrored: bool


class SourceIndex:
    """Where each imported case came from, checked against the key (one refusal line per problem)."""

    def __init__(self, dataset: Path, exports: Path, key_path: Path, visits: dict):
        if not key_path.is_file():
            raise FPNError(f"--key {key_path}: no such key file (the key {dataset.name} was imported with)")
        self.key, _ = privacy.load_or_create_key(key_path)
        self.map_path = privacy.sources_map_path(key_path, dataset)
        if not self.map_path.is_file():
            raise FPNError(f"{self.map_path}: no private sources map beside the key --key {key_path}: was "
                           f"{dataset.name} imported with this key?")
        self.dataset, self.exports, self.visits = dataset, exports, visits
        self.rows = {r["case"]: r for r in read_report(report_file(dataset)) if r.get("case")}
        self.paths: dict[str, tuple[str, str]] = {}
        for token, case, rel in privacy.read_sources_map(self.map_path):
            if case:
                self.paths[case] = (token, rel)
        self._localizers: dict[str, Path] | None = None

    def localizers(self) -> dict[str, Path]:
        """OP images under ``-i`` by SOPInstanceUID (read once)."""
        if self._localizers is None:
            files, _ = find_exports(self.exports)
            _, self._localizers, _, _ = sort_dicom(files)
        return self._localizers

    def source(self, case: str) -> DicomSource:
        row = self.rows.get(case)
        if row is None:
            raise FPNError(f"case {case}: not in {report_file(self.dataset)} (not imported by fpn_import)")
        if row.get("format") != DICOM_FORMAT:
            raise FPNError(f"case {case}: imported from {row.get('format') or 'an unknown format'}, not from DICOM "
                           "OPT: no DICOM output")
        if case not in self.paths:
            raise FPNError(f"case {case}: not in the private sources map {self.map_path}")
        token, rel = self.paths[case]
        if privacy.source_token(self.key, rel) != token:
            raise FPNError(f"case {case}: the key does not match the one {self.dataset.name} was imported with "
                           f"(its source token differs)")
        opt = self.exports / rel
        if not opt.is_file():
            raise FPNError(f"case {case}: its export file {token} (listed in {self.map_path}) is missing under "
                           f"-i {self.exports}")
        if not case.endswith("_" + privacy.scan_hash(self.key, file_digest(opt), "")):
            raise FPNError(f"case {case}: its export file {token} under -i {self.exports} is not the file that "
                           "was imported (changed since?)")
        ref = referenced_localizer(read_header(opt))
        op = self.localizers().get(ref) if ref else None
        if op is None:
            raise FPNError(f"case {case}: the OP localizer its export file {token} references is not under "
                           f"-i {self.exports}")
        try:
            scan = read_opt(opt, {ref: op})[0]
            raster = raster_geometry(scan)
        except FPNError as exc:  # the reader's line names the file: keep only its reason
            raise FPNError(f"case {case}: {token}: {str(exc).removeprefix(f'{opt}: ')}") from None
        if scan.localizer is None or raster.affine is None:
            raise FPNError(f"case {case}: {token} has no B-scan positions on its localizer")
        return DicomSource(case, opt, op, scan, raster.affine, bool(self.visits.get(case, {}).get("mirrored")))


def mask_on_localizer(mask_ba: np.ndarray, src: DicomSource) -> np.ndarray:
    """The en-face label map ``(B, A)`` (as predicted: mirrored back first when the import mirrored
    it) on the localizer's pixel grid ``(rows, cols)``, uint8, nearest neighbour."""
    scan = src.scan
    assert scan.localizer is not None and scan.localizer_spacing is not None
    n_b, _, n_a = scan.volume.shape
    if mask_ba.shape != (n_b, n_a):
        raise FPNError(f"case {src.case}: the prediction's shape {mask_ba.shape} is not the scan's en-face plane "
                       f"{(n_b, n_a)}")
    device = mirror_a(mask_ba) if src.mirrored else mask_ba
    moving = sitk.GetImageFromArray(np.ascontiguousarray(device, dtype=np.uint8))  # en-face index space
    rows_cols = scan.localizer.shape[:2]
    ref = localizer_image(np.zeros(rows_cols, np.float32), scan.localizer_spacing, scan.localizer_origin)
    back = enface_transform(src.affine).GetInverse()  # localizer (x, y) -> en-face (a, b)
    out = sitk.Resample(moving, ref, back, sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def overlay_png(localizer: np.ndarray, mask: np.ndarray, labels: dict[str, int]) -> np.ndarray:
    """RGB uint8 of the localizer's size: the localizer in grey, each class's outline in its colour."""
    from fpnunet.report.overlay import Layer, class_colours, compose  # lazy: start-up time (matplotlib, scipy)

    colours = class_colours(labels)
    layers = [Layer(mask == v, colours[name]) for name, v in labels.items() if v > 0]
    return compose(np.asarray(localizer, dtype=np.float64), layers, (1, 1), thickness=1)
