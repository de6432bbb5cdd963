"""fpn_import on device exports written by the tests: HEYEX VOL, HEYEX XML + PNG, DICOM OPT + OP.

Every export holds a known localizer (the synthetic SLO placed at known B-scan positions), so the
registered SLO must equal the synthetic one; shapes, spacing, laterality, mirroring, privacy and
the one-line errors are checked on the written files.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from device_exports import COL0, PATIENT, ROW0, S_A, STEP, make_faf, make_truth, write_dicom, write_vol, write_xml

from fpnunet.errors import FPNError
from fpnunet.importer.cli import import_exports as main
from fpnunet.io import read_image


def run(tmp: Path, inp: Path, *extra: str, name: str = "Dataset950_Imp") -> Path:
    out = tmp / "raw" / name
    assert main(["-i", str(inp), "-o", str(out), "--key", str(tmp / "secret" / "import.key"), "--no-progress",
                 *extra]) == 0
    return out


def report(out: Path) -> list[dict[str, str]]:
    with open(out / "import_report.csv", newline="") as f:
        return list(csv.DictReader(f))


def only(folder: Path, suffix: str) -> Path:
    hits = [p for p in folder.iterdir() if p.name.endswith(suffix)]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.fixture(scope="module")
def truth():
    return make_truth(0)


@pytest.mark.parametrize("fmt", ["vol", "xml", "dicom"])
def test_geometry_and_registered_slo_match_the_truth(tmp_path, truth, fmt):
    inp = tmp_path / "in"
    inp.mkdir()
    if fmt == "vol":
        write_vol(inp / "scan.vol", truth, laterality="OD")
    elif fmt == "xml":
        write_xml(inp / "x", truth, laterality="R")
    else:
        write_dicom(inp / "d", truth, laterality="R")
    out = run(tmp_path, inp)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "OCT"} and ds["projection_axis"] == 1 and ds["enface_modalities"] == ["SLO"]
    (case,) = ds["visits"]
    assert ds["visits"][case] == {"patient": ds["patients"][case], "eye": "OD", "date": "2021-05-06",
                                  "mirrored": False, "split": "Tr"}
    vol = read_image(out / "imagesTr" / f"{case}_0000.nii.gz")
    assert vol.array.shape == truth.volume_u8.shape  # (B, D, A)
    np.testing.assert_array_equal(vol.array, truth.volume_u8)
    np.testing.assert_allclose(vol.spacing, truth.spacing, rtol=1e-6)  # numpy order (sB, sD, sA) mm
    import SimpleITK as sitk

    img = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
    assert img.GetSize() == (32, 64, 8)  # SimpleITK (A, D, B)
    np.testing.assert_allclose(img.GetSpacing(), (S_A, 0.0039, 2 * S_A), rtol=1e-6)
    slo = read_image(out / "enfaceTr" / f"{case}_SLO.nii.gz")
    assert slo.array.shape == (8, 32)
    np.testing.assert_allclose(slo.array, truth.slo_u8, atol=1e-3)  # B-scan 0 at the bottom of the localizer
    np.testing.assert_allclose(slo.spacing, (2 * S_A, S_A), rtol=1e-6)
    (row,) = report(out)
    assert row["case"] == case and row["slo"] == "written" and row["shape_bda"] == "8x64x32"
    assert row["format"] == {"vol": "heyex-vol", "xml": "heyex-xml", "dicom": "dicom-opt"}[fmt]
    assert row["reader"].startswith("pydicom 3" if fmt == "dicom" else "eyepy 0.21")
    assert [float(v) for v in row["spacing_bda_mm"].split()] == pytest.approx(truth.spacing, rel=1e-5)


def test_os_scans_are_mirrored_only_when_asked_and_it_is_recorded(tmp_path):
    t = make_truth(1, right_eye=False)
    inp = tmp_path / "in"
    write_xml(inp / "x", t, laterality="L")
    plain = run(tmp_path, inp, name="Dataset951_Plain")
    mirrored = run(tmp_path, inp, "--mirror-os", name="Dataset952_Mirror")
    for out, flip in ((plain, False), (mirrored, True)):
        ds = json.loads((out / "dataset.json").read_text())
        (case,) = ds["visits"]
        assert "_OS_" in case and ds["visits"][case]["eye"] == "OS" and ds["visits"][case]["mirrored"] is flip
        assert ds["import"]["mirror_os"] is flip and report(out)[0]["mirrored"] == str(flip).lower()
        vol = read_image(out / "imagesTr" / f"{case}_0000.nii.gz").array
        slo = read_image(out / "enfaceTr" / f"{case}_SLO.nii.gz").array
        np.testing.assert_array_equal(vol, t.volume_u8[..., ::-1] if flip else t.volume_u8)
        np.testing.assert_allclose(slo, t.slo_u8[:, ::-1] if flip else t.slo_u8, atol=1e-3)
    with pytest.raises(FPNError, match="--mirror-os"):  # an append must make the same choice
        main(["-i", str(inp), "-o", str(mirrored), "--append", "--key", str(tmp_path / "secret" / "import.key")])


def _all_output_bytes(root: Path) -> list[tuple[Path, bytes]]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out.append((p, gzip.decompress(data) if p.name.endswith(".gz") else data))
    return out


def test_nothing_identifying_survives_in_any_output_file_or_name(tmp_path, truth, capsys):
    inp = tmp_path / "in"
    write_vol(inp / f"{PATIENT['last']}_{PATIENT['first']}_{PATIENT['dob']}.vol", truth)
    write_xml(inp / f"{PATIENT['last']}_xml", truth, laterality="L")
    write_dicom(inp / "dicom", truth, stem=f"{PATIENT['id']}_{PATIENT['serial']}")
    out = run(tmp_path, inp, "--split-test", "0.5")
    printed = capsys.readouterr()
    secrets = [PATIENT["last"], PATIENT["first"], PATIENT["id"], PATIENT["dob"], PATIENT["dob"].replace("-", ""),
               PATIENT["serial"], "31337"]
    files = _all_output_bytes(out)
    assert len(files) >= 8
    for path, data in files:
        for s in secrets:
            assert s.lower().encode() not in data.lower(), (path, s)
            assert s.lower() not in str(path.relative_to(tmp_path)).lower(), (path, s)
    for s in secrets:
        assert s.lower() not in (printed.out + printed.err).lower(), s
    ds = json.loads((out / "dataset.json").read_text())
    assert len(set(ds["patients"].values())) == 1  # one patient, three scans: pseudonym from the patient id
    # the same key gives the same pseudonym; the private source list stays beside the key
    key = tmp_path / "secret" / "import.key"
    assert key.is_file() and (key.stat().st_mode & 0o777) == 0o600
    sources = (tmp_path / "secret" / "Dataset950_Imp.sources.csv").read_text()
    assert PATIENT["last"] in sources and len(sources.splitlines()) == 4
    # --keep-ids keeps the patient id, still no name, birth date or serial number
    kept = run(tmp_path, inp, "--keep-ids", name="Dataset953_Kept")
    assert set(json.loads((kept / "dataset.json").read_text())["patients"].values()) == {PATIENT["id"]}
    for path, data in _all_output_bytes(kept):
        for s in secrets[:2] + secrets[3:6]:
            assert s.lower().encode() not in data.lower(), (path, s)


def test_key_inside_the_dataset_is_refused(tmp_path, truth):
    write_vol(tmp_path / "in" / "a.vol", truth)
    out = tmp_path / "raw" / "Dataset950_Imp"
    with pytest.raises(FPNError, match="outside the dataset"):
        main(["-i", str(tmp_path / "in"), "-o", str(out), "--key", str(out / "k.key")])
    assert not out.exists()


def test_bad_files_stop_the_import_with_one_line_each_and_nothing_written(tmp_path, truth):
    inp = tmp_path / "in"
    inp.mkdir()
    good = write_vol(inp / "good.vol", truth).read_bytes()
    (inp / "corrupt.vol").write_bytes(good[: len(good) // 3])
    write_vol(inp / "radial.vol", truth, scan_pattern=5)
    angles = np.linspace(0, np.pi, 8, endpoint=False)
    star = np.stack([np.stack([0.2 - 0.15 * np.cos(angles), 0.2 - 0.15 * np.sin(angles)], 1),
                     np.stack([0.2 + 0.15 * np.cos(angles), 0.2 + 0.15 * np.sin(angles)], 1)], 1)
    write_xml(inp / "star", truth, positions=star)
    opt, _ = write_dicom(inp / "dicom", truth)
    opt.write_bytes(opt.read_bytes()[:300])  # file meta intact, dataset cut short
    out = tmp_path / "raw" / "Dataset950_Imp"
    args = ["-i", str(inp), "-o", str(out), "--key", str(tmp_path / "k.key"), "--no-progress"]
    with pytest.raises(FPNError) as err:
        main(args)
    lines = str(err.value).splitlines()
    assert len(lines) == 5 and "nothing was written" in lines[0]
    assert any(f"{opt}: cannot decode the DICOM pixel data" in ln for ln in lines)
    assert any(ln.endswith(f"{inp / 'corrupt.vol'}: not a readable HEYEX VOL file (" + ln.split("(", 1)[1])
               for ln in lines[1:])
    assert any(f"{inp / 'radial.vol'}: a radial (star) scan" in ln for ln in lines)
    assert any(f"{inp / 'star' / 'export.xml'}: B-scans are not parallel" in ln for ln in lines)
    assert not out.exists() and not list((tmp_path / "raw").iterdir())
    # --skip-bad imports the good one and lists the others in the report
    assert main([*args, "--skip-bad"]) == 0
    rows = report(out)
    assert [r["format"] for r in rows if r["case"]] == ["heyex-vol"]
    notes = [r["notes"] for r in rows if not r["case"]]
    assert len(notes) == 4 and all(n.startswith("skipped: ") for n in notes)
    assert all(str(inp) not in n for n in notes)


def test_positions_outside_the_localizer_write_no_slo_and_say_why(tmp_path):
    t = make_truth(2, offset=(30.0, 0.0))  # shifted 30 pixels right: past the 44-pixel localizer
    write_vol(tmp_path / "in" / "a.vol", t)
    out = run(tmp_path, tmp_path / "in")
    (row,) = report(out)
    assert row["slo"].startswith("not written: B-scan positions fall outside the localizer")
    assert not (out / "enfaceTr").exists() or not list((out / "enfaceTr").iterdir())
    assert len(list((out / "imagesTr").iterdir())) == 1


def test_labels_on_the_localizer_or_the_enface_grid(tmp_path, truth):
    inp, labels = tmp_path / "in", tmp_path / "labels"
    inp.mkdir()
    labels.mkdir()
    write_vol(inp / "onloc.vol", truth)
    write_vol(inp / "onenface.vol", make_truth(3))
    import imageio.v3 as iio

    big = np.zeros(truth.localizer.shape, np.uint8)  # the label drawn on the localizer, 0/255
    for b in range(8):
        big[5 + (7 - b) * 2, 4:36] = truth.label[b] * 255
    iio.imwrite(labels / "onloc.png", big)
    t3 = make_truth(3)
    iio.imwrite(labels / "onenface.png", t3.label)
    out = run(tmp_path, inp, "--labels", str(labels))
    rows = {r["source"]: r for r in report(out)}
    assert all(r["label"] == "written" for r in rows.values())
    got = {p.name: read_image(p).array for p in (out / "labelsTr").iterdir()}
    assert len(got) == 2
    arrays = sorted(got.values(), key=lambda a: int(np.abs(a.astype(int) - truth.label).sum()))
    np.testing.assert_array_equal(arrays[0], truth.label)
    np.testing.assert_array_equal(arrays[1], t3.label)
    # a transposed label is an error naming the file
    iio.imwrite(labels / "onenface.png", t3.label.T.copy())
    with pytest.raises(FPNError, match=r"onenface.png: label shape \(32, 8\) matches neither .*transposed"):
        run(tmp_path, inp, "--labels", str(labels), name="Dataset951_T")


def test_append_adds_new_scans_and_skips_those_already_imported(tmp_path, truth):
    inp = tmp_path / "in"
    inp.mkdir()
    write_vol(inp / "a.vol", truth)
    out = run(tmp_path, inp)
    other = dict(PATIENT, id="OTHER1")
    write_vol(inp / "b.vol", make_truth(4), patient=other)
    assert main(["-i", str(inp), "-o", str(out), "--append", "--key", str(tmp_path / "secret" / "import.key"),
                 "--no-progress"]) == 0
    ds = json.loads((out / "dataset.json").read_text())
    assert len(ds["visits"]) == 2 and len(set(ds["patients"].values())) == 2 and ds["numTraining"] == 2
    rows = report(out)
    assert len(rows) == 3 and rows[-1]["notes"] == "already imported: skipped"
    with pytest.raises(FPNError, match="not empty"):
        run(tmp_path, inp)


def test_missing_eyepy_is_one_line_telling_how_to_install(tmp_path, truth, monkeypatch):
    import sys

    inp = tmp_path / "in"
    inp.mkdir()
    write_vol(inp / "a.vol", truth)
    monkeypatch.setitem(sys.modules, "eyepy", None)
    with pytest.raises(FPNError, match=r'pip install "fpnunet\[import\]"'):
        run(tmp_path, inp)


def test_enface_images_are_registered_onto_the_slo_with_a_check_picture(tmp_path):
    import imageio.v3 as iio
    import SimpleITK as sitk

    t = make_truth(5, loc_shape=(96, 96), texture=2.0)
    inp, faf_dir = tmp_path / "in", tmp_path / "faf"
    write_vol(inp / "eye.vol", t)
    faf, moved = make_faf(t)
    faf_dir.mkdir()
    iio.imwrite(faf_dir / "eye.png", faf)  # matched by the export's file name
    out = run(tmp_path, inp, "--enface", f"FAF={faf_dir}")
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["enface_modalities"] == ["SLO", "FAF"]
    (row,) = report(out)
    assert row["FAF_status"] == "registered" and float(row["FAF_metric"]) < -0.3
    (case,) = ds["visits"]
    got = read_image(out / "enfaceTr" / f"{case}_FAF.nii.gz").array
    # the truth: the FAF sampled where each en-face pixel lies on it (the known map's inverse)
    inv = moved.GetInverse()
    want = np.zeros_like(got)
    faf_img = sitk.GetImageFromArray(faf.astype(np.float32))
    for b in range(8):
        for a in range(32):
            q = inv.TransformPoint((COL0 + a, ROW0 + (7 - b) * STEP))
            want[b, a] = faf_img.EvaluateAtContinuousIndex(q)
    assert np.abs(got - want).mean() < 6.0 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.97
    picture = out / "import_checks" / f"{case}_FAF.png"
    assert iio.imread(picture).shape[1] > 600
    # a DICOM FAF is matched by patient id, eye and visit date (its file name says nothing)
    (faf_dir / "eye.png").unlink()
    dcm = dataclasses.replace(t, localizer=faf)
    write_dicom(faf_dir, dcm, laterality="R", stem="faf0001", opt_too=False)
    write_dicom(faf_dir, dcm, laterality="L", stem="faf0002", opt_too=False)  # the other eye: no match
    out2 = run(tmp_path, inp, "--enface", f"FAF={faf_dir}", name="Dataset951_Dicom")
    (row,) = report(out2)
    assert row["FAF_status"] == "registered"
    (case2,) = json.loads((out2 / "dataset.json").read_text())["visits"]
    got2 = read_image(out2 / "enfaceTr" / f"{case2}_FAF.nii.gz").array
    assert np.corrcoef(got2.ravel(), want.ravel())[0, 1] > 0.97


def test_import_then_plan_pretrain_on_slo_train_and_predict(tmp_path, monkeypatch):
    """End to end on 8 imported VOL scans (6 labelled, one mirrored OS eye): the import is a dataset
    every later stage takes unchanged, and the SLO it wrote is the pretraining target."""
    import imageio.v3 as iio
    import torch

    from fpnunet.inference.cli import main as predict_main
    from fpnunet.networks import network_class
    from fpnunet.plans.plan import Plan
    from fpnunet.preprocessing.cli import main as preprocess_main
    from fpnunet.training.pretrain_cli import main as pretrain_main
    from fpnunet.training.train_cli import main as train_main

    torch.set_num_threads(1)
    for k, v in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "results")):
        monkeypatch.setenv(k, str(tmp_path / v))
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    inp, labels = tmp_path / "in", tmp_path / "labels"
    labels.mkdir()
    for i in range(8):  # (16, 64, 48): B >= 11 for the SSIM window of the pretraining loss
        t = make_truth(10 + i, shape=(16, 64, 48), loc_shape=(40, 56), right_eye=i != 3)
        write_vol(inp / f"scan{i}.vol", t, laterality="OS" if i == 3 else "OD",
                  patient=dict(PATIENT, id=f"PAT{i:03d}"))
        if i < 6:
            iio.imwrite(labels / f"scan{i}.png", t.label)
    out = run(tmp_path, inp, "--labels", str(labels), "--mirror-os", name="Dataset954_E2E")
    assert sum(r["slo"] == "written" for r in report(out)) == 8
    assert preprocess_main(["-d", "954", "-np", "1", "--no-progress"]) == 0
    plan_path = tmp_path / "pre" / "Dataset954_E2E" / "plans.json"
    plan = Plan.load(plan_path)
    config = plan.configuration("fpn")
    kwargs = network_class("fpn").plan_kwargs(tuple(config.patch_size), config.depth, plan.enface_spacing)
    kwargs["features"] = [4, 8, 16, 32, 64][: len(kwargs["features"])]
    config.network.kwargs = kwargs
    config.batch_size = 2
    plan.save(plan_path)
    common = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--epochs", "1", "--iterations-per-epoch", "1",
              "--val-every", "0", "--bn-recalibration", "0"]
    assert pretrain_main(["954", "--target", "SLO", *common]) == 0
    results = tmp_path / "results" / "Dataset954_E2E"
    assert (results / "pretrain__fpn__SLO" / "fold_all" / "checkpoint_final.pth").is_file()
    assert train_main(["954", "0", "--pretrained", "auto", *common]) == 0
    (model,) = [p for p in results.iterdir() if p.name.startswith("fpn__")]
    assert model.name.endswith("ssl-SLO")
    assert predict_main(["-i", str(out / "imagesTr"), "-o", str(tmp_path / "pred"), "-d", "954", "-f", "0",
                         "--disable-tta", "--device", "cpu"]) == 0
    preds = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert len(preds) == 8 and read_image(preds[0]).array.shape == (16, 48)
    # the OS eye was imported mirrored: --mirror-back flips its prediction back, copies the others
    visits = json.loads((out / "dataset.json").read_text())["visits"]
    (os_case,) = [c for c, v in visits.items() if v["mirrored"]]
    assert main(["--mirror-back", str(tmp_path / "pred"), "-d", "954", "-o", str(tmp_path / "back")]) == 0
    for p in preds:
        back = read_image(tmp_path / "back" / p.name).array
        pred = read_image(p).array
        np.testing.assert_array_equal(back, pred[:, ::-1] if p.name.startswith(os_case) else pred)


def test_mirror_back_flips_only_the_mirrored_cases(tmp_path, monkeypatch):
    from fpnunet.io import write_image

    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    raw = tmp_path / "raw" / "Dataset955_M"
    raw.mkdir(parents=True)
    visits = {"P1_OS_aaa": {"mirrored": True}, "P1_OD_bbb": {"mirrored": False}}
    (raw / "dataset.json").write_text(json.dumps({"visits": visits}))
    pred = np.zeros((4, 6), np.uint8)
    pred[1, :2] = 1  # asymmetric along A
    for case in visits:
        write_image(tmp_path / "pred" / f"{case}.nii.gz", pred, (0.1, 0.01))
    assert main(["--mirror-back", str(tmp_path / "pred"), "-d", "955", "-o", str(tmp_path / "back")]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "back" / "P1_OS_aaa.nii.gz").array, pred[:, ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "back" / "P1_OD_bbb.nii.gz").array, pred)
    with pytest.raises(FPNError, match="needs -d"):
        main(["--mirror-back", str(tmp_path / "pred"), "-o", str(tmp_path / "back2")])


def test_geometry_refuses_unequal_spacing_and_missing_positions_give_no_slo(truth):
    from fpnunet.importer.geometry import raster_geometry
    from fpnunet.importer.localizer import register_localizer
    from fpnunet.importer.scan import Scan

    def scan(pos):
        return Scan(Path("x.vol"), "heyex-vol", "test", truth.volume_u8, (None, 0.0039, S_A), positions=pos,
                    localizer=truth.localizer, localizer_spacing=(S_A, S_A))

    uneven = truth.positions.copy()
    uneven[4:, :, 1] -= 0.3 * STEP * S_A  # the last four B-scans 30 % closer
    with pytest.raises(FPNError, match=r"^x.vol: B-scans are not equally spaced"):
        raster_geometry(scan(uneven))
    longer = truth.positions.copy()
    longer[2, 1, 0] += 5 * S_A
    with pytest.raises(FPNError, match=r"^x.vol: B-scans have different lengths"):
        raster_geometry(scan(longer))
    with pytest.raises(FPNError, match="B-scan distance is neither in the header nor derivable"):
        raster_geometry(scan(None))
    ok = raster_geometry(scan(truth.positions))
    assert ok.spacing == pytest.approx(truth.spacing) and ok.notes == ["B-scan distance from the B-scan positions"]
    assert register_localizer(scan(None), None, (8, 32)) == (None, "no B-scan positions in the header")


def test_split_test_puts_whole_patients_into_imagesTs(tmp_path):
    inp, labels = tmp_path / "in", tmp_path / "labels"
    labels.mkdir()
    for i in range(3):
        t = make_truth(20 + i)
        write_vol(inp / f"s{i}.vol", t, patient=dict(PATIENT, id=f"Q{i}"))
        write_vol(inp / f"s{i}b.vol", make_truth(30 + i), laterality="OS", patient=dict(PATIENT, id=f"Q{i}"))
        import imageio.v3 as iio

        iio.imwrite(labels / f"s{i}.png", t.label)
    out = run(tmp_path, inp, "--split-test", "0.34", "--labels", str(labels))
    visits = json.loads((out / "dataset.json").read_text())["visits"]
    test_patients = {v["patient"] for v in visits.values() if v["split"] == "Ts"}
    assert len(test_patients) == 1
    ts = sorted(p.name.split("_0000")[0] for p in (out / "imagesTs").iterdir())
    assert ts == sorted(c for c, v in visits.items() if v["patient"] in test_patients) and len(ts) == 2
    assert len(list((out / "imagesTr").iterdir())) == 4 and len(list((out / "enfaceTr").iterdir())) == 4
    assert len(list((out / "labelsTs").iterdir())) == 1 and len(list((out / "labelsTr").iterdir())) == 2
    rows = report(out)
    assert sorted(r["slo"] == "written" for r in rows) == [False, False, True, True, True, True]


def test_degree_positions_as_eyepy_gives_them_for_e2e_go_through_the_same_path(truth):
    """No valid E2E file can be written here; this checks the shared EyeVolume path with E2E-like
    metadata (pixel scale unit, positions and localizer scale in degrees, origin at the centre)."""
    import eyepy as ep

    from fpnunet.importer.geometry import raster_geometry
    from fpnunet.importer.heyex import scan_from_eyevolume
    from fpnunet.importer.localizer import register_localizer

    deg = 30 / truth.localizer.shape[1]  # eyepy: 30 degrees over the localizer's width, per pixel both ways
    pos_deg = truth.positions / S_A * deg - 15  # localizer pixels -> degrees from the centre
    bm = [ep.EyeBscanMeta(start_pos=tuple(p[0]), end_pos=tuple(p[1]), pos_unit="°", scale_y=0.0039) for p in pos_deg]
    meta = ep.EyeVolumeMeta(scale_z=1, scale_x=1, scale_y=1, scale_unit="px", bscan_meta=bm, laterality="OD")
    loc = ep.EyeEnface(truth.localizer, ep.EyeEnfaceMeta(scale_x=deg, scale_y=deg, scale_unit="°"))
    ev = ep.EyeVolume(truth.volume_u8, meta=meta, localizer=loc)
    scan = scan_from_eyevolume(ev, Path("x.e2e"), "heyex-e2e", "eyepy", "PID", [], mm_per_degree=0.288)
    raster = raster_geometry(scan)
    step_deg, length_deg = STEP * deg, 31 * deg
    assert raster.spacing == pytest.approx((step_deg * 0.288, 0.0039, length_deg * 0.288 / 31))
    assert any("degree" in n or "°" in n for n in raster.notes)
    slo, why = register_localizer(scan, raster.affine, (8, 32))
    assert why == "" and np.abs(slo - truth.slo_u8).max() < 1e-3
