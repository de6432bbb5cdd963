"""fpn_export_model / fpn_install_model: a trained model travels as one zip and predicts the same bytes."""
from __future__ import annotations

import hashlib
import json
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_predict import _make_model_folder, _volume_file
from test_training import NAME, dataset  # noqa: F401  (dataset is a fixture)

from fpnunet.atomic import save_json
from fpnunet.calibration_file import Calibration, write_calibration
from fpnunet.commands.export_model import main as export_main
from fpnunet.commands.install_model import main as install_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main as train_main
from fpnunet.model_package import MANIFEST_FILE, PACKAGE_VERSION


def _run(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err  # one line, no traceback
    return err[0]


# ----------------------------------------------------------------------------- the done-when test
def test_export_install_predict_reproduces_the_source_bytes(dataset, tmp_path, monkeypatch, capsys):  # noqa: F811
    assert train_main(["901", "0", "--seed", "3"]) == 0
    model = dataset["results"] / "fpn__lf1__scratch"
    # a site's model folder also holds case lists and identifiers, which must stay home
    meta = json.loads((model / "dataset.json").read_text())
    meta["patients"] = {f"tiny_{i:03d}": f"PATIENT-{i}" for i in range(6)}
    save_json(meta, model / "dataset.json")
    write_calibration(model, Calibration(temperature=1.5, calibrated=True))  # travels and is applied on both sites
    save_json({"0": {"train": ["tiny_000"], "val": ["tiny_001"]}}, model / "splits_final.json")
    save_json({"cases": ["tiny_002"]}, model / "hard_cases.json")
    fp = {"num_labelled": 6, "num_unlabelled": 0, "num_test": 0, "median_shape": [8, 64, 32],
          "median_spacing": [0.12, 0.004, 0.0113],
          "cases": {f"tiny_{i:03d}": {"spacing": [0.12, 0.004, 0.0113]} for i in range(6)}}
    save_json(fp, dataset["pre"] / "dataset_fingerprint.json")

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for i in range(2):
        _volume_file(in_dir / f"new{i}_0000.nii.gz", shape=(8, 64, 32), seed=10 + i)
    src_out = tmp_path / "src_out"
    assert _run(predict_main, ["-i", str(in_dir), "-o", str(src_out), "-m", str(model), "--device", "cpu",
                               "--save-probabilities"]) == 0

    package = tmp_path / "model.zip"
    assert _run(export_main, ["-m", str(model), "-o", str(package), "--licence", "CC-BY-4.0"]) == 0
    blob = package.read_bytes()
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        contents = {n: zf.read(n) for n in names}
    assert names == {MANIFEST_FILE, "MODEL_CARD.md", "model_card.json", "plans.json", "dataset.json",
                     "calibration.json", "fold_0/network.json", "fold_0/weights.safetensors"}
    for text in [blob, *contents.values(), *(n.encode() for n in names)]:
        for i in range(6):
            assert f"tiny_{i:03d}".encode() not in text and f"PATIENT-{i}".encode() not in text
    card = json.loads(contents["model_card.json"])
    assert card["licence"] == "CC-BY-4.0" and card["labels"] == {"background": 0, "GA": 1}
    assert card["training_data"]["labelled_volumes"] == 6 and card["versions"]["torch"]
    assert set(card["cross_validation"]["dice_per_fold"]) == {"0"}
    manifest = json.loads(contents[MANIFEST_FILE])
    assert manifest["files"]["plans.json"] == hashlib.sha256(contents["plans.json"]).hexdigest()

    # the other site: a fresh results root, no raw or preprocessed data
    other = tmp_path / "other_site"
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "results")):
        monkeypatch.setenv(var, str(other / sub))
    capsys.readouterr()
    assert _run(install_main, [str(package)]) == 0
    installed = other / "results" / NAME / "fpn__lf1__scratch"
    assert "model card: fpn__lf1__scratch" in capsys.readouterr().err
    assert (installed / "fold_0" / "checkpoint_final.pth").is_file()
    assert not list(installed.rglob("*.safetensors")) and not (installed / "splits_final.json").exists()
    dst_out = tmp_path / "dst_out"
    assert _run(predict_main, ["-i", str(in_dir), "-o", str(dst_out), "-d", "901", "--model", "fpn__lf1__scratch",
                               "--device", "cpu", "--save-probabilities"]) == 0
    err = capsys.readouterr().err
    assert "model card: fpn__lf1__scratch" in err and "lies outside" not in err
    for name in ("new0.nii.gz", "new1.nii.gz", "new0.npz", "new1.npz", "lesion_areas.csv"):
        assert (dst_out / name).read_bytes() == (src_out / name).read_bytes(), name

    # a volume with another spacing than the card lists: predicted, with a warning
    _volume_file(in_dir / "new0_0000.nii.gz", shape=(8, 64, 32), spacing=(0.24, 0.004, 0.0113), seed=10)
    assert _run(predict_main, ["-i", str(in_dir), "-o", str(tmp_path / "o3"), "-m", str(installed),
                               "--device", "cpu"]) == 0
    assert "new0: en-face spacing 0.24 x 0.0113 mm (B x A) lies outside" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusals
@pytest.fixture()
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package of a two-fold test model folder (no training needed)."""
    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("FPN_PREPROCESSED", str(tmp_path / "pre"))
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "installed"))
    model = _make_model_folder(tmp_path / "src", folds=2)
    out = tmp_path / "model.zip"
    assert _run(export_main, ["-m", str(model), "-o", str(out), "--licence", "internal"]) == 0
    return out


def _rewrite(src: Path, dst: Path, change=None, add: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
             manifest=None) -> Path:
    """Copy the zip ``src`` to ``dst``, passing each member through ``change(name, data)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == MANIFEST_FILE and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            elif change is not None:
                data = change(info.filename, data)
            zout.writestr(info, data)
        for info, data in add:
            zout.writestr(info, data)
    return dst


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _executable(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    return info


def _flip_weight(name: str, data: bytes) -> bytes:
    if not name.endswith("weights.safetensors"):
        return data
    b = bytearray(data)
    b[-3] ^= 0x01  # one bit of one weight
    return bytes(b)


def _listed(*names: str):
    def change(m: dict) -> dict:
        m["files"].update({n: "0" * 64 for n in names})
        return m
    return change


CASES = {
    "tampered weight": (dict(change=_flip_weight), "does not match its SHA-256"),
    "zip slip": (dict(add=[("../escape.json", b"{}")], manifest=_listed("../escape.json")), "escapes"),
    "absolute path": (dict(add=[("/tmp/abs.json", b"{}")]), "absolute path"),
    "symlink": (dict(add=[(_link("fold_0/link.json"), b"/etc/passwd")]), "symbolic link"),
    "executable": (dict(add=[(_executable("run.json"), b"{}")]), "executable"),
    "pickle file": (dict(add=[("fold_0/model.pkl", pickle.dumps({"a": 1}))]), "pickle-based file"),
    "pth file": (dict(add=[("fold_0/checkpoint_final.pth", b"PK\x03\x04")]), "pickle-based file"),
    "pickle bytes": (dict(add=[("extra.json", pickle.dumps([1, 2]))], manifest=_listed("extra.json")),
                     "holds a pickle"),
    "script": (dict(add=[("setup.py", b"import os")]), "not a kind of file"),
    "unlisted": (dict(add=[("extra.json", b"{}")]), "not listed in manifest.json"),
    "newer version": (dict(manifest=lambda m: {**m, "format": {**m["format"], "version": PACKAGE_VERSION + 1}}),
                      "package format version 2 is not one this fpnunet reads"),
    "missing file": (dict(manifest=_listed("fold_2/network.json")), "which the zip lacks"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_package_is_refused_with_one_line_and_nothing_installed(package, tmp_path, capsys, case):
    kwargs, message = CASES[case]
    bad = _rewrite(package, tmp_path / "bad.zip", **kwargs)
    capsys.readouterr()
    assert _run(install_main, [str(bad)]) == 1
    line = _error_line(capsys)
    assert message in line and str(bad) in line, line
    root = tmp_path / "installed"
    assert not root.exists() or not any(root.rglob("*.*")), list(root.rglob("*"))  # no file, no temp folder
    assert not (tmp_path / "escape.json").exists()


def test_install_good_package_then_refuse_a_second_install(package, tmp_path, capsys):
    assert _run(install_main, [str(package)]) == 0
    target = tmp_path / "installed" / "Dataset999_Test" / "colnet__lf1.0__scratch"
    assert sorted(p.name for p in target.iterdir()) == ["MODEL_CARD.md", "dataset.json", "fold_0", "fold_1",
                                                        "manifest.json", "model_card.json", "plans.json"]
    capsys.readouterr()
    assert _run(install_main, [str(package)]) == 1
    assert "already installed; pass --overwrite" in _error_line(capsys)
    assert _run(install_main, [str(package), "--overwrite"]) == 0
    assert _run(install_main, [str(package), "--name", "copy"]) == 0
    assert (target.parent / "copy" / "fold_1" / "checkpoint_final.pth").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["colnet__lf1.0__scratch", "copy"]


def test_export_refuses_flags_before_reading(tmp_path, capsys):
    model = _make_model_folder(tmp_path / "src", folds=1)
    assert _run(export_main, ["-m", str(model), "-o", str(tmp_path / "m.tar"), "--licence", "x"]) == 1
    assert "must end in .zip" in _error_line(capsys)
    (tmp_path / "m.zip").write_bytes(b"")
    assert _run(export_main, ["-m", str(model), "-o", str(tmp_path / "m.zip"), "--licence", "x"]) == 1
    assert "exists; pass --overwrite" in _error_line(capsys)
    assert _run(install_main, [str(tmp_path / "m.zip")]) == 1
    assert "not a zip file" in _error_line(capsys)


def test_the_weights_are_safetensors_of_the_checkpoint(package, tmp_path):
    from safetensors.numpy import load

    from fpnunet.checkpoint import load_checkpoint

    with zipfile.ZipFile(package) as zf:
        tensors = load(zf.read("fold_1/weights.safetensors"))
    fold = tmp_path / "src" / "colnet__lf1.0__scratch" / "fold_1"
    state = load_checkpoint(fold / "checkpoint_final.pth")["state_dict"]
    assert set(tensors) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k], v.numpy())


def test_card_warnings_on_spacing_and_device():
    from fpnunet.model_card import CardCheck, CardFacts, build_card, card_markdown

    facts = CardFacts(model="m", dataset="Dataset900_X", configuration="fpn", network="fpn",
                      labels={"background": 0, "GA": 1}, channel_names={"0": "OCT"}, enface_modalities=["SLO"],
                      checkpoint="final", folds=["0", "1"], epochs={"0": 2, "1": 2}, licence="internal",
                      fingerprint={"num_labelled": 3, "num_unlabelled": 1, "cases": {
                          "a": {"spacing": [0.12, 0.004, 0.011]}, "b": {"spacing": [0.06, 0.004, 0.006]}}},
                      fold_dice={"0": 0.8, "1": 0.6}, devices=["DICOM OPT"])
    card = build_card(facts, "2026-01-01")
    assert card["cross_validation"]["mean"] == pytest.approx(0.7)
    assert card["cross_validation"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert card["training_data"]["spacing_min_bda_mm"] == [0.06, 0.004, 0.006]
    check = CardCheck(card)
    assert "CV Dice 0.700 +/- 0.141 over 2 fold(s)" in check.line and "3 labelled + 1 unlabelled" in check.line
    assert check.check("c", (0.1, 0.01)) == []
    assert check.check("c", (0.065, 0.0057)) == []  # within 10 % of the smallest spacing seen
    (note,) = check.check("c", (0.2, 0.01))
    assert note.startswith("c: en-face spacing 0.2 x 0.01 mm (B x A) lies outside") and "along B" in note
    (note,) = check.check("c", (0.1, 0.01), device="HEYEX VOL")
    assert "device HEYEX VOL is not one the model saw (DICOM OPT" in note
    assert "| 1 | 0.6000 |" in card_markdown(card)
