"""fpn_import: Topcon FDA/FDS written by the tests, the ways DICOM OPT writes the B-scan distance, and
the refusals a hostile user found (XML paths out of the export, wrong --mirror-back, clashing ids,
duplicate classes, tiny or constant --enface images, unmatched labels, DICM garbage)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from device_exports import PATIENT, make_truth, write_dicom, write_topcon, write_vol, write_xml
from import_runs import report, run

from fpnunet.errors import FPNError
from fpnunet.importer.cli import import_exports as main


@pytest.fixture(scope="module")
def truth():
    return make_truth(0)


def test_topcon_fda_and_fds_import_and_visits_of_one_patient_group(tmp_path, truth, capsys):
    inp = tmp_path / "in"
    write_topcon(inp / "a.fda", truth.volume_u8, kind="FDA", eye=1, fundus=truth.localizer)
    write_topcon(inp / "b.fds", truth.volume_u8[:, :, ::-1], kind="FDS", eye=0, visit=(2022, 1, 2, 3, 4, 5))
    write_topcon(inp / "other.fda", truth.volume_u8, kind="FDA", patient_id="OTHER77")
    out = run(tmp_path, inp)
    rows = {r["format"] + r["laterality"]: r for r in report(out)}
    assert sorted(rows) == ["topcon-fdaOD", "topcon-fdaOS", "topcon-fdsOD"]
    ds = json.loads((out / "dataset.json").read_text())
    by_eye = {(v["eye"], v["date"]): ds["patients"][c] for c, v in ds["visits"].items()}
    # the same patient id in an FDA and an FDS: one patient, so the folds keep the visits together
    assert by_eye[("OS", "2021-05-06")] == by_eye[("OD", "2022-01-02")] != by_eye[("OD", "2021-05-06")]
    from fpnunet.io import read_image

    for c, v in ds["visits"].items():
        vol = read_image(out / "imagesTr" / f"{c}_0000.nii.gz")
        want = truth.volume_u8[:, :, ::-1] if v["date"] == "2022-01-02" else truth.volume_u8
        np.testing.assert_array_equal(vol.array, want)
        np.testing.assert_allclose(vol.spacing, (6.0 / 8, 0.0035, 6.0 / 32))
    assert rows["topcon-fdaOS"]["slo"].endswith("not placed: the file has no @REGIST_INFO chunk "
                                                "(where the scan lies on the fundus)")
    assert rows["topcon-fdsOD"]["slo"] == "not written: no localizer image in the export"
    text = (out / "import_report.csv").read_text() + (out / "dataset.json").read_text() + capsys.readouterr().out
    for s in (PATIENT["id"], PATIENT["last"], PATIENT["first"], PATIENT["serial"], "1950-01-02", "OTHER77"):
        assert s not in text, s


def test_topcon_single_b_scan_and_broken_files_are_one_line_each(tmp_path, truth):
    inp = tmp_path / "in"
    write_topcon(inp / "one.fda", truth.volume_u8[:1], kind="FDA")
    write_topcon(inp / "one.fds", truth.volume_u8[:1], kind="FDS")
    good = write_topcon(inp / "cut.fds", truth.volume_u8, kind="FDS").read_bytes()
    (inp / "cut.fds").write_bytes(good[: len(good) // 2])
    with pytest.raises(FPNError) as err:
        run(tmp_path, inp)
    lines = str(err.value).splitlines()[1:]
    assert sum("1 B-scan(s) of 32 A-scans is no volume" in ln for ln in lines) == 2
    assert sum("not a readable Topcon file (chunk '@IMG_SCAN_03'" in ln for ln in lines) == 1


@pytest.mark.parametrize("where, want", [
    ("shared-spacing", "SharedFunctionalGroups PixelMeasures SpacingBetweenSlices"),
    ("shared-thickness", "SharedFunctionalGroups PixelMeasures SliceThickness"),
    ("perframe-thickness", "PerFrameFunctionalGroups PixelMeasures SliceThickness"),
    ("plane-position", "PlanePositionSequence step between frames"),
    ("positions", "B-scan positions (mm)"),
    ("nothing", None),
])
def test_dicom_bscan_distance_is_read_where_devices_write_it(tmp_path, truth, where, want):
    """The B-scan distance (0.0234 mm) in each place a writer puts it; the report says which."""
    import pydicom
    from pydicom.dataset import Dataset

    opt, op = write_dicom(tmp_path / "in", truth, laterality="R")
    ds = pydicom.dcmread(opt)
    pm = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    del pm.SliceThickness
    step = truth.spacing[0]
    if where == "shared-spacing":
        pm.SpacingBetweenSlices = step
    elif where == "shared-thickness":
        pm.SliceThickness = step
    elif where == "perframe-thickness":
        for g in ds.PerFrameFunctionalGroupsSequence:
            q = Dataset()
            q.SliceThickness = step
            g.PixelMeasuresSequence = [q]
    elif where == "plane-position":
        for b, g in enumerate(ds.PerFrameFunctionalGroupsSequence):
            q = Dataset()
            q.ImagePositionPatient = [0.0, 0.0, b * step]
            g.PlanePositionSequence = [q]
    if where != "positions":  # only the positions on an OP image of unknown pixel size remain
        o = pydicom.dcmread(op)
        del o.PixelSpacing
        o.save_as(op)
    ds.save_as(opt)
    if want is None:
        with pytest.raises(FPNError, match="B-scan distance is neither in the header nor derivable.*SliceThickness"):
            run(tmp_path, tmp_path / "in")
        return
    (row,) = report(run(tmp_path, tmp_path / "in"))
    assert row["bscan_distance_from"] == want
    assert float(row["spacing_bda_mm"].split()[0]) == pytest.approx(step, rel=1e-5)


def test_photograph_with_the_opt_sop_class_gets_its_own_line(tmp_path, truth):
    import pydicom

    _, op = write_dicom(tmp_path / "in", truth, opt_too=False)
    ds = pydicom.dcmread(op)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
    ds.save_as(op)
    (tmp_path / "in" / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.raises(FPNError) as err:
        run(tmp_path, tmp_path / "in")
    text = str(err.value)
    assert "2 export file(s) cannot be imported" in text
    assert "SOP class says Ophthalmic Tomography, but it holds one 2D image (Modality OP)" in text
    assert "not a readable DICOM file" in text  # DICM magic + garbage: a line, not "nothing to import"


@pytest.mark.parametrize("url", ["../../../secret/other_patient.png", "/etc/other_patient.png",
                                 "C:\\HEYEX\\../x/../../secret.png"])
def test_xml_export_cannot_read_images_outside_its_folder(tmp_path, truth, url):
    xml = write_xml(tmp_path / "in" / "x", truth)
    (tmp_path / "secret").mkdir()
    text = xml.read_text().replace("C:\\HEYEX\\export\\b003.png", url)
    xml.write_text(text)
    with pytest.raises(FPNError, match=r"image 5 of the export \(.*\) lies outside the export's folder"):
        run(tmp_path, tmp_path / "in")
    assert not (tmp_path / "raw" / "Dataset950_Imp").exists()


def test_flags_a_hostile_user_tried(tmp_path, truth, monkeypatch):
    write_vol(tmp_path / "in" / "a.vol", truth)
    key = str(tmp_path / "k.key")
    with pytest.raises(FPNError, match="--classes: GA given more than once"):
        main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "raw" / "Dataset950_A"), "--classes", "GA", "GA"])
    (tmp_path / "raw" / "Dataset900_Old").mkdir(parents=True)
    with pytest.raises(FPNError, match="dataset id 900 is already taken by .*Dataset900_Old"):
        main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "raw" / "Dataset900_Clash"), "--key", key])
    assert not (tmp_path / "raw" / "Dataset900_Clash").exists()
    # --mirror-back with predictions of another dataset
    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    out = run(tmp_path, tmp_path / "in", name="Dataset951_M")
    from fpnunet.io import write_image

    write_image(tmp_path / "pred" / "P1_OS_aaaaaa.nii.gz", np.zeros((8, 32), np.uint8), (0.1, 0.01))
    with pytest.raises(FPNError, match=r"1 of 1 prediction\(s\) are of cases that Dataset951_M does not have"):
        main(["--mirror-back", str(tmp_path / "pred"), "-d", "951", "-o", str(tmp_path / "back")])
    assert not (tmp_path / "back").exists() and out.is_dir()


def test_tiny_or_constant_enface_images_and_unmatched_labels_get_a_word(tmp_path, capsys):
    import imageio.v3 as iio

    t = make_truth(5, loc_shape=(96, 96), texture=2.0)
    inp, faf, labels = tmp_path / "in", tmp_path / "faf", tmp_path / "labels"
    write_vol(inp / "eye.vol", t)
    write_vol(inp / "flat.vol", make_truth(6, loc_shape=(96, 96), texture=2.0), patient=dict(PATIENT, id="Q2"))
    faf.mkdir()
    labels.mkdir()
    iio.imwrite(faf / "eye.png", np.full((2, 2), 7, np.uint8))
    iio.imwrite(faf / "flat.png", np.full((40, 40), 7, np.uint8))
    iio.imwrite(labels / f"{PATIENT['last']}_typo.png", t.label)
    out = run(tmp_path, inp, "--enface", f"FAF={faf}", "--labels", str(labels))
    status = sorted(r["FAF_status"] for r in report(out))
    assert status == ["not registered: the image is 2 x 2 pixels (at least 16 x 16 needed)",
                      "not registered: the image is constant (nothing to register)"]
    printed = capsys.readouterr().out
    assert "warning: 1 label file(s) in --labels matched no imported scan" in printed
    assert PATIENT["last"] not in printed
    assert f"{PATIENT['last']}_typo.png" in (tmp_path / "secret" / "Dataset950_Imp.sources.csv").read_text()


def _broken(tmp, ext: str, how: str, truth) -> bytes:
    magic = {"vol": b"HSF-OCT-103\0", "e2e": b"CMDb", "fda": b"FOCTFDA\x01\0\0\0\xe9\x03\0\0",
             "fds": b"FOCTFDS\x01\0\0\0\xe9\x03\0\0", "dcm": b"\0" * 128 + b"DICM", "xml": b"<HEDX><BODY>"}[ext]
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
    if how == "zero-byte":
        return b""
    if how == "garbage":
        return garbage
    if how == "magic+garbage":
        return magic + garbage
    if ext == "vol":  # truncated: a valid file cut short
        data = write_vol(tmp / "valid.vol", truth).read_bytes()
    elif ext in ("fda", "fds"):
        data = write_topcon(tmp / "valid.top", truth.volume_u8, kind=ext.upper()).read_bytes()
    elif ext == "dcm":
        data = write_dicom(tmp / "valid", truth)[0].read_bytes()
    elif ext == "xml":
        data = write_xml(tmp / "valid", truth).read_bytes()
    else:
        data = magic + garbage
    return data[: len(data) // 2]


@pytest.mark.parametrize("ext", ["vol", "e2e", "fda", "fds", "dcm", "xml"])
@pytest.mark.parametrize("how", ["zero-byte", "garbage", "magic+garbage", "truncated"])
def test_no_unreadable_file_prints_its_name(tmp_path, truth, capsys, ext, how):
    """A clinic export named after the patient, unreadable in every way a fuzz found: the printed line
    carries a token, the private sources map the path (beside the key, outside the dataset)."""
    name = "Doe_John_19380731"
    inp = tmp_path / "in" / name  # the folder too (XML exports are folders)
    inp.mkdir(parents=True)
    (inp / f"{name}.{ext}").write_bytes(_broken(tmp_path / "w", ext, how, truth))
    with pytest.raises(FPNError) as err:
        run(tmp_path, tmp_path / "in")
    printed = capsys.readouterr()
    text = str(err.value) + printed.out + printed.err
    for s in ("Doe", "John", "19380731"):
        assert s not in text, (s, text)
    if "src-" in str(err.value):
        assert f"{name}.{ext}" in (tmp_path / "secret" / "Dataset950_Imp.sources.csv").read_text()


def test_broken_enface_image_prints_no_name(tmp_path, truth, capsys):
    inp, faf = tmp_path / "in", tmp_path / "faf"
    write_vol(inp / "Doe_John_19380731.vol", truth)
    faf.mkdir()
    (faf / "Doe_John_19380731.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(FPNError) as err:
        run(tmp_path, inp, "--enface", f"FAF={faf}")
    text = str(err.value) + capsys.readouterr().out
    assert "en-face file src-" in text and "Doe" not in text and "19380731" not in text


def test_plan_counts_imported_slo_and_says_when_none_could_be_placed(tmp_path, monkeypatch, capsys):
    from fpnunet.commands.plan_and_preprocess import main as preprocess_main

    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    for i, offset in enumerate([(0.0, 0.0), (30.0, 0.0)]):  # the second scan's positions miss the localizer
        write_vol(tmp_path / "in" / f"s{i}.vol", make_truth(40 + i, shape=(8, 64, 32), offset=offset),
                  patient=dict(PATIENT, id=f"R{i}"))
    run(tmp_path, tmp_path / "in", name="Dataset956_Slo")
    capsys.readouterr()
    assert preprocess_main(["-d", "956", "--verify-only", "--no-progress"]) == 0
    assert "en-face images: SLO 1 of 2 cases" in capsys.readouterr().out
    write_topcon(tmp_path / "in2" / "a.fds", make_truth(42).volume_u8, kind="FDS", patient_id="R9")
    write_topcon(tmp_path / "in2" / "b.fds", make_truth(43).volume_u8, kind="FDS", patient_id="R8")
    run(tmp_path, tmp_path / "in2", name="Dataset957_Nolocalizer")
    capsys.readouterr()
    assert preprocess_main(["-d", "957", "--verify-only", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SLO 0 of 2 cases" in out and "SLO: listed in dataset.json, but no training case has this image" in out
