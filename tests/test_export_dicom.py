"""fpn_export_dicom: the predictions of DICOM-imported cases as DICOM Segmentations on the OP localizer.

A synthetic OPT + OP pair whose registration is known (tests/device_exports.py: B-scan ``b`` on
localizer row ``ROW0 + (B - 1 - b) * STEP``, A-scan ``a`` on column ``COL0 + a``) is imported; the
case's true label stands in for the prediction; the SEG read back by pydicom / highdicom must
reference the OP series with its frame of reference and put the mask on the lesion drawn on the
localizer.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from device_exports import COL0, PATIENT, ROW0, STEP, make_truth, write_dicom, write_vol
from import_runs import run as import_run

from fpnunet.commands.export_dicom import main
from fpnunet.importer.geometry import mirror_a
from fpnunet.importer.report import read_report, report_file
from fpnunet.io import write_image

pytest.importorskip("highdicom")
SHAPE, LOC = (16, 64, 48), (44, 60)
FOR_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def lesion_on_localizer(label: np.ndarray) -> np.ndarray:
    """The label drawn on the localizer the way the export placed the B-scans: rows of B-scans get
    their B-scan's label, a row between two B-scans the union of both."""
    n_b, n_a = label.shape
    out = np.zeros(LOC, np.uint8)
    for b in range(n_b):
        r = ROW0 + (n_b - 1 - b) * STEP
        out[r, COL0:COL0 + n_a] = label[b]
        if b < n_b - 1:
            out[r - STEP + 1:r, COL0:COL0 + n_a] = np.maximum(label[b], label[b + 1])
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


@pytest.fixture()
def imported(tmp_path, data_roots):
    """``(tmp, exports, dataset, {"R"/"L"/"vol": case}, {"R"/"L": truth}, predictions)``: one right eye
    (OPT + OP with a frame of reference), one left eye imported mirrored (--mirror-os), one HEYEX VOL."""
    inp = tmp_path / "exports"
    truths = {"R": make_truth(3, SHAPE, loc_shape=LOC), "L": make_truth(5, SHAPE, right_eye=False, loc_shape=LOC)}
    write_dicom(inp / "od", truths["R"], laterality="R", stem="od", frame_of_reference=FOR_UID)
    write_dicom(inp / "os", truths["L"], laterality="L", stem="os")
    vol_truth = make_truth(7, (8, 64, 32))
    write_vol(inp / "vol" / "scan.vol", vol_truth)
    out = import_run(tmp_path, inp, "--mirror-os", name="Dataset951_Dcm")
    pred = tmp_path / "pred"
    # which case is which: the DICOM cases have the 16-B-scan shape
    rows = {r["case"]: r for r in read_report(report_file(out)) if r.get("case")}
    cases = {}
    for case, row in rows.items():
        if row["format"] != "dicom-opt":
            cases["vol"] = case
            label = vol_truth.label
        else:
            eye = "R" if row["laterality"] == "OD" else "L"
            cases[eye] = case
            label = truths[eye].label
            label = mirror_a(label) if row["mirrored"] == "true" else label  # predicted on the mirrored volume
        write_image(pred / f"{case}.nii.gz", label.astype(np.uint8), (0.02, 0.01))
    assert set(cases) == {"R", "L", "vol"}
    return tmp_path, inp, out, cases, truths, pred


def _run(tmp, inp, out, pred, *extra, key=None):
    return main(["-p", str(pred), "-d", out.name, "-i", str(inp), "-o", str(tmp / "dicom_out"),
                 "--key", str(key or tmp / "secret" / "import.key"), *extra])


def test_the_segmentation_lands_on_the_lesion_and_references_the_op_image(imported, capsys):
    import highdicom as hd
    import pydicom

    tmp, inp, out, cases, truths, pred = imported
    assert _run(tmp, inp, out, pred, "--cases", cases["R"], cases["L"]) == 0
    printed = capsys.readouterr()
    res = tmp / "dicom_out"
    for eye, stem in (("R", "od"), ("L", "os")):
        op = pydicom.dcmread(inp / stem / f"{stem}_op.dcm")
        seg_path = res / f"{cases[eye]}_seg.dcm"
        raw = pydicom.dcmread(seg_path)
        assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == op.SeriesInstanceUID
        assert raw.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
            op.SOPInstanceUID
        assert raw.StudyInstanceUID == op.StudyInstanceUID and raw.PatientID == PATIENT["id"]  # only here
        if eye == "R":
            assert raw.FrameOfReferenceUID == FOR_UID
        else:
            assert "FrameOfReferenceUID" not in raw or raw.FrameOfReferenceUID != FOR_UID
        seg = hd.seg.segread(seg_path)
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["GA"]
        frame = seg.get_pixels_by_source_instance([op.SOPInstanceUID], combine_segments=True)[0]
        assert frame.shape == LOC
        want = lesion_on_localizer(truths[eye].label)
        assert want.sum() > 40
        assert dice(frame, want) > 0.8, dice(frame, want)
        n_b, n_a = truths[eye].label.shape
        bscan_rows = [ROW0 + (n_b - 1 - b) * STEP for b in range(n_b)]
        assert np.array_equal(frame[bscan_rows][:, COL0:COL0 + n_a] > 0, truths[eye].label[:, :] > 0)
        outside = np.ones(LOC, bool)
        outside[ROW0 - 1:bscan_rows[0] + 2, COL0 - 1:COL0 + n_a + 1] = False
        assert not frame[outside].any()  # nothing beyond the scanned area
        png = res / f"{cases[eye]}_overlay.png"
        import imageio.v3 as iio

        rgb = iio.imread(png)
        assert rgb.shape == (*LOC, 3)
        coloured = (rgb[..., 0] != rgb[..., 1])
        assert coloured.any() and not coloured[~(frame > 0)].any()  # the outline lies on the mask
    text = printed.out + printed.err
    for value in (PATIENT["id"], PATIENT["last"], PATIENT["first"], "19500102", PATIENT["serial"]):
        assert value not in text


def test_refusals_are_one_line_and_write_nothing(imported, capsys):
    tmp, inp, out, cases, truths, pred = imported
    res = tmp / "dicom_out"

    def refused(*extra, key=None) -> str:
        with pytest.raises(SystemExit):
            _run(tmp, inp, out, pred, *extra, key=key)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert not res.exists()
        for value in (PATIENT["id"], PATIENT["last"], PATIENT["first"], PATIENT["serial"]):
            assert value not in err[0]
        return err[0]

    assert "imported from heyex-vol, not from DICOM OPT" in refused()  # every prediction: the VOL case too
    assert "not from DICOM OPT" in refused("--cases", cases["R"], cases["vol"])
    other_key = tmp / "other" / "import.key"
    other_key.parent.mkdir()
    other_key.write_text("ab" * 32 + "\n")
    shutil.copy(tmp / "secret" / "Dataset951_Dcm.sources.csv", other_key.parent / "Dataset951_Dcm.sources.csv")
    assert "the key does not match" in refused("--cases", cases["R"], key=other_key)
    assert "no such key file" in refused("--cases", cases["R"], key=tmp / "nokey" / "k.key")
    (inp / "od" / "od_opt.dcm").rename(tmp / "moved.dcm")
    assert "is missing under -i" in refused("--cases", cases["R"])
    (tmp / "moved.dcm").write_bytes((tmp / "moved.dcm").read_bytes()[:-1] + b"\x01")
    (tmp / "moved.dcm").rename(inp / "od" / "od_opt.dcm")
    assert "is not the file that was imported" in refused("--cases", cases["R"])


def test_the_prediction_must_be_on_the_scans_enface_plane(imported, capsys):
    tmp, inp, out, cases, truths, pred = imported
    write_image(pred / f"{cases['R']}.nii.gz", np.zeros((SHAPE[2], SHAPE[0]), np.uint8), (0.01, 0.02))
    with pytest.raises(SystemExit):
        _run(tmp, inp, out, pred, "--cases", cases["R"])
    assert "is not the scan's en-face plane (16, 48)" in capsys.readouterr().err


def test_the_source_path_is_read_from_the_private_map(imported):
    """The sources map (beside the key, outside the dataset) is what finds the export: it holds the
    path, the dataset does not."""
    tmp, inp, out, cases, truths, pred = imported
    rel = "od/od_opt.dcm"
    text = (tmp / "secret" / "Dataset951_Dcm.sources.csv").read_text()
    assert f",{cases['R']},{rel}" in text
    assert not any(rel in p.read_text(errors="ignore") for p in Path(out).rglob("*") if p.is_file()
                   and p.suffix in (".csv", ".json"))
