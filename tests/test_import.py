"""fpn_import on device exports written by the tests: the dataset it makes and what it refuses.

Privacy (nothing identifying in any output), the pseudonym key, one-line errors for bad files,
--append, --split-test, --mirror-back, and an import every later stage takes unchanged (plan,
pretrain on its SLO, train, predict). The geometry of what is written: tests/test_import_geometry.py.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from device_exports import PATIENT, make_truth, write_dicom, write_vol, write_xml
from import_runs import report, run

from fpnunet.errors import FPNError
from fpnunet.importer.cli import import_exports as main
from fpnunet.io import read_image


@pytest.fixture(scope="module")
def truth():
    return make_truth(0)


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
    # each file is printed as its source token (file names often hold the patient's name); the token's
    # path is in the private sources map beside the key
    rows = (tmp_path / "Dataset950_Imp.sources.csv").read_text().splitlines()[1:]
    token = {r.split(",")[2]: r.split(",")[0] for r in rows if not r.split(",")[1]}  # not imported: no case
    assert sorted(token) == ["corrupt.vol", "dicom/scan_opt.dcm", "radial.vol", "star/export.xml"]
    assert any(f"- {token['dicom/scan_opt.dcm']}: cannot decode the DICOM pixel data" in ln for ln in lines)
    assert any(f"- {token['corrupt.vol']}: not a readable HEYEX VOL file (" in ln for ln in lines)
    assert any(f"- {token['radial.vol']}: a radial (star) scan" in ln for ln in lines)
    assert any(f"- {token['star/export.xml']}: B-scans are not parallel" in ln for ln in lines)
    assert str(inp) not in str(err.value)
    assert not out.exists() and not list((tmp_path / "raw").iterdir())
    # --skip-bad imports the good one and lists the others in the report
    assert main([*args, "--skip-bad"]) == 0
    rows = report(out)
    assert [r["format"] for r in rows if r["case"]] == ["heyex-vol"]
    notes = [r["notes"] for r in rows if not r["case"]]
    assert len(notes) == 4 and all(n.startswith("skipped: ") for n in notes)
    assert all(str(inp) not in n for n in notes)


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


def test_import_then_plan_pretrain_on_slo_train_and_predict(tmp_path, monkeypatch):
    """End to end on 8 imported VOL scans (6 labelled, one mirrored OS eye): the import is a dataset
    every later stage takes unchanged, and the SLO it wrote is the pretraining target."""
    import imageio.v3 as iio
    import torch

    from fpnunet.commands.plan_and_preprocess import main as preprocess_main
    from fpnunet.commands.predict import main as predict_main
    from fpnunet.commands.pretrain import main as pretrain_main
    from fpnunet.commands.train import main as train_main
    from fpnunet.networks import network_class
    from fpnunet.plans.plan import Plan

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
