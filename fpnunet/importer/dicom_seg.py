"""A DICOM Segmentation (highdicom) of one label map on its OP localizer image.

The SEG references the OP image (its series, its SOP instance) and copies from it what highdicom
copies from a source image: the patient and study modules and, when the OP has one, its frame of
reference. These identifiers live only in that file: nothing of them is printed or written
elsewhere (the caller writes the returned dataset, under a temporary name then renamed). One
segment per foreground class (segment number = the class's label value order), BINARY,
algorithm type AUTOMATIC (fpnunet and its version).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.importer.scan import require

SERIES_DESCRIPTION = "fpnunet segmentation"
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime")
"""The patient/study attributes highdicom copies from the source image (empty when the source lacks them)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fpnunet")
    except PackageNotFoundError:  # pragma: no cover - a source checkout without install
        return "unknown"


def segmentation(op_path: Path, mask: np.ndarray, labels: dict[str, int], case: str):
    """The ``highdicom.seg.Segmentation`` of ``mask`` ``(rows, cols)`` (the label values) on the OP image
    ``op_path``; ``case`` (a pseudonym) becomes the content label's description."""
    hd = require("highdicom", "writing DICOM Segmentations")
    pydicom = require("pydicom", "writing DICOM Segmentations")
    from pydicom.sr.codedict import codes

    op = pydicom.dcmread(op_path)
    for keyword in TYPE2_COPIED:  # Type 2: present, maybe empty; some exports leave them out
        if keyword not in op:
            setattr(op, keyword, None)
    if "NumberOfFrames" not in op:  # the OP IOD is multi-frame (Type 1); some writers leave it out for one frame
        op.NumberOfFrames = 1
    if "SharedFunctionalGroupsSequence" not in op:  # highdicom reads a multi-frame source's pixel measures here
        from pydicom.dataset import Dataset

        measures = Dataset()
        if "PixelSpacing" in op:
            measures.PixelSpacing = op.PixelSpacing
        group = Dataset()
        group.PixelMeasuresSequence = [measures]
        op.SharedFunctionalGroupsSequence = [group]
    if (int(op.Rows), int(op.Columns)) != tuple(mask.shape):
        raise FPNError(f"case {case}: the mask on the localizer {mask.shape} does not match the OP image "
                       f"({int(op.Rows)}, {int(op.Columns)})")
    classes = sorted(((n, int(v)) for n, v in labels.items() if int(v) > 0), key=lambda nv: nv[1])
    version = _version()
    algorithm = hd.AlgorithmIdentificationSequence(name="fpnunet", version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for i, (name, _) in enumerate(classes)]
    numbered = np.zeros(mask.shape, dtype=np.uint8)  # label value -> segment number 1..K
    for i, (_, value) in enumerate(classes):
        numbered[mask == value] = i + 1
    seg = hd.seg.Segmentation(
        source_images=[op], pixel_array=numbered, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="fpnunet", manufacturer_model_name="fpnunet",
        software_versions=version, device_serial_number="none", series_description=SERIES_DESCRIPTION,
        content_description=f"fpnunet prediction of {case}", omit_empty_frames=False)
    for group in [*seg.get("SharedFunctionalGroupsSequence", []), *seg.get("PerFrameFunctionalGroupsSequence", [])]:
        if "PixelMeasuresSequence" in group and "SliceThickness" not in group.PixelMeasuresSequence[0]:
            del group.PixelMeasuresSequence  # a photograph has no slice thickness: its frames are the OP's pixels
    return seg
