"""The chosen pipeline beyond its own masks: ``fpn_predict --best --overlays --report`` (the report says
which configuration(s) made each mask) and ``fpn_export_model -d ID --best`` -> ``fpn_install_model``
on another site -> ``fpn_predict -d ID --best`` with the same bytes."""
from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
from test_predict import _make_model_folder, _volume_file

from fpnunet.commands.export_model import main as export_main
from fpnunet.commands.install_model import main as install_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.model_package import MANIFEST_FILE
from fpnunet.pipeline_files import write_chosen

DATASET = "Dataset999_Test"
MEMBERS = (("colnet-a", "colnet__lf1__a"), ("colnet-b", "colnet__lf1__b"))
PATIENT = "PATIENT-77"


def _run(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _site(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "results")):
        monkeypatch.setenv(var, str(root / sub))
    return root / "results" / DATASET


@pytest.fixture()
def chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two untrained model folders and a chosen pipeline averaging them with a minimum lesion area
    (no training: the choice is written as fpn_find_best_configuration writes it); the input folder."""
    results = _site(tmp_path / "site_a", monkeypatch)
    for seed, (_, folder) in enumerate(MEMBERS):
        _make_model_folder(results, folds=2 - seed, name=folder)
    choice = {"dataset": DATASET, "checkpoint": "final", "tta": True,
              "members": [{"candidate": c, "model_folder": f, "folds": ["0", "1"][: 2 - i]}
                          for i, (c, f) in enumerate(MEMBERS)],
              "postprocessing": {"threshold": 0.45, "min_area_mm2": 0.0005, "fill_holes": True, "keep_largest": False},
              "scores": [{"name": "colnet-a + colnet-b", "dice": 0.5}], "predict_command": "fpn_predict -d 999 --best"}
    write_chosen(results, choice, "chosen: colnet-a + colnet-b")
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for i in range(2):
        _volume_file(in_dir / f"new{i}_0000.nii.gz", shape=(12, 24, 40), seed=5 + i)
    return results, in_dir


def _best(in_dir: Path, out: Path, *extra: str) -> int:
    return _run(predict_main, ["-d", "999", "--best", "-i", str(in_dir), "-o", str(out), "--device", "cpu", *extra])


def test_best_with_overlays_and_report_names_the_configurations(chosen, tmp_path, capsys):
    _, in_dir = chosen
    out = tmp_path / "best"
    assert _best(in_dir, out, "--overlays", "--report") == 0
    made_by = "colnet-a + colnet-b"
    with open(out / "lesion_areas.csv", newline="") as f:
        assert {r["configuration"] for r in csv.DictReader(f)} == {made_by}
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["new0.png", "new1.png"]
    html = (out / "report.html").read_text()
    assert "<th>configuration</th>" in html and html.count(f'<td class="t">{made_by}</td>') == 2
    assert not (out / ".members").exists()
    # the pictures are of the combined masks: the same masks as a run without pictures
    plain = tmp_path / "plain"
    assert _best(in_dir, plain) == 0
    for name in ("new0.nii.gz", "new1.nii.gz", "lesion_areas.csv"):
        assert (plain / name).read_bytes() == (out / name).read_bytes(), name


def test_a_plain_prediction_report_has_no_configuration_column(chosen, tmp_path):
    results, in_dir = chosen
    out = tmp_path / "one"
    assert _run(predict_main, ["-m", str(results / MEMBERS[0][1]), "-i", str(in_dir), "-o", str(out),
                               "--device", "cpu", "--report"]) == 0
    assert "configuration" not in (out / "report.html").read_text()


def test_export_install_predict_best_on_another_site_gives_the_same_bytes(chosen, tmp_path, monkeypatch, capsys):
    results, in_dir = chosen
    here = tmp_path / "here"
    assert _best(in_dir, here, "--npz") == 0
    meta = json.loads((results / MEMBERS[0][1] / "dataset.json").read_text())
    meta["patients"] = {"tiny_case_1": PATIENT}  # identifiers of this site stay home
    (results / MEMBERS[0][1] / "dataset.json").write_text(json.dumps(meta))
    package = tmp_path / "pipeline.zip"
    assert _run(export_main, ["-d", "999", "--best", "-o", str(package), "--licence", "internal"]) == 0
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        blobs = [zf.read(n) for n in names]
        manifest = json.loads(zf.read(MANIFEST_FILE))
        for n in names - {MANIFEST_FILE, "chosen_pipeline.json", "chosen_pipeline.txt"}:
            with zipfile.ZipFile(zf.open(n)) as inner:  # every member's own model package
                blobs += [inner.read(m) for m in inner.namelist()]
                folds = json.loads(inner.read(MANIFEST_FILE))["folds"]
                assert folds == (["0", "1"] if "__a" in n else ["0"])
    assert names == {MANIFEST_FILE, "chosen_pipeline.json", "chosen_pipeline.txt",
                     *(f"models/{f}.zip" for _, f in MEMBERS)}
    assert manifest["dataset"] == DATASET and manifest["format"]["name"] == "fpnunet-pipeline-package"
    assert not any(b"tiny_case_1" in b or PATIENT.encode() in b for b in blobs)

    other = _site(tmp_path / "site_b", monkeypatch)  # a fresh results root, no raw or preprocessed data
    capsys.readouterr()
    assert _run(install_main, [str(package)]) == 0
    assert "fpn_predict -d Dataset999_Test --best" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == sorted(
        ["chosen_pipeline.json", "chosen_pipeline.txt", *(f for _, f in MEMBERS)])
    there = tmp_path / "there"
    assert _best(in_dir, there, "--npz") == 0
    for name in ("new0.nii.gz", "new1.nii.gz", "new0.npz", "new1.npz", "lesion_areas.csv"):
        assert (there / name).read_bytes() == (here / name).read_bytes(), name

    # a second install of the same pipeline is refused (one line), the installed one untouched
    capsys.readouterr()
    assert _run(install_main, [str(package)]) != 0
    assert "already installed; pass --overwrite" in capsys.readouterr().err
    assert _run(install_main, [str(package), "--overwrite"]) == 0


def test_a_tampered_pipeline_package_installs_nothing(chosen, tmp_path, monkeypatch, capsys):
    package = tmp_path / "pipeline.zip"
    assert _run(export_main, ["-d", "999", "--best", "-o", str(package), "--licence", "internal"]) == 0
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "chosen_pipeline.json":
                data = data.replace(b"0.45", b"0.05")
            dst.writestr(info, data)
    other = _site(tmp_path / "site_b", monkeypatch)
    capsys.readouterr()
    assert _run(install_main, [str(bad)]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "chosen_pipeline.json" in err[0] and "SHA-256" in err[0]
    assert not other.exists() or not any(other.iterdir())


def test_export_best_flag_errors(chosen, tmp_path, capsys):
    results, _ = chosen
    for argv, message in ((["--best"], "--best needs -d DATASET"),
                          (["-d", "999", "--best", "-f", "0"], "-f/-chk: not with --best"),
                          (["-d", "999"], "name the model: -m MODEL_DIR")):
        capsys.readouterr()
        assert _run(export_main, [*argv, "-o", str(tmp_path / "p.zip"), "--licence", "x"]) != 0
        assert message in capsys.readouterr().err
        assert not (tmp_path / "p.zip").exists()
