"""Issue 12 items 6, 7 and part of 9: label values outside dataset.json are refused by
fpn_evaluate; OS errors are one-line messages naming the path; a failed prediction writes no
lesion_areas.csv."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from raw_dataset import make_raw_dataset
from test_training import dataset, tiny_kwargs  # noqa: F401  (dataset is a fixture)

from fpnunet.atomic import save_json
from fpnunet.checkpoint import model_spec, save_checkpoint
from fpnunet.commands.evaluate import main as evaluate_main
from fpnunet.commands.plan_and_preprocess import main as preprocess_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main as train_main
from fpnunet.io import write_image
from fpnunet.networks import build_network

SPACING = (0.1, 0.01)
LABELS = {"background": 0, "GA": 1}


def fails(capsys, call, *needles: str) -> str:
    with pytest.raises(SystemExit) as exc:
        call()
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def label_folders(tmp_path: Path, ref_value: float, pred_value: float, dtype=np.uint8) -> tuple[Path, Path]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for folder, value in ((ref, ref_value), (pred, pred_value)):
        folder.mkdir(exist_ok=True)
        good = np.zeros((8, 16), dtype)
        good[2:5, 3:9] = 1
        write_image(folder / "a.nii.gz", good, SPACING)
        odd = good.copy()
        odd[0, 0] = value
        write_image(folder / "b.nii.gz", odd, SPACING)
    return ref, pred


@pytest.mark.parametrize(("ref_value", "pred_value", "dtype", "bad", "needle"), [
    (1, 7, np.uint8, "pred", "label value 7"),
    (5, 1, np.uint8, "ref", "label value 5"),
    (-1, 1, np.int16, "ref", "label value -1"),
    (np.nan, 1, np.float32, "ref", "NaN"),
])
def test_evaluate_refuses_label_values_outside_dataset_json(data_roots, tmp_path, capsys, ref_value, pred_value,
                                                            dtype, bad, needle):
    raw, _ = data_roots
    save_json({"name": "X", "channel_names": {"0": "OCT"}, "labels": LABELS, "file_ending": ".nii.gz"},
              raw / "Dataset950_X" / "dataset.json")
    ref, pred = label_folders(tmp_path, ref_value, pred_value, dtype)
    fails(capsys, lambda: evaluate_main(["-r", str(ref), "-p", str(pred), "-d", "950"]),
          str((ref if bad == "ref" else pred) / "b.nii.gz"), needle)
    assert not (pred / "summary.json").exists()


def _model_folder(dataset, root: Path) -> Path:  # noqa: F811
    model = root / "model"
    (model / "fold_0").mkdir(parents=True)
    net = build_network("fpn", 1, 2, **tiny_kwargs())
    save_checkpoint({**model_spec("fpn", tiny_kwargs(), 1, 2, "fpn"), "state_dict": net.state_dict(), "epoch": 1},
                    model / "fold_0" / "checkpoint_final.pth")
    shutil.copy(dataset["pre"] / "plans.json", model / "plans.json")
    return model


def _one_input(folder: Path) -> None:
    folder.mkdir()
    write_image(folder / "case_0000.nii.gz", np.zeros((8, 64, 32), np.float32), (0.1, 0.004, 0.01))


def test_failed_prediction_writes_no_lesion_table(dataset, tmp_path, capsys):  # noqa: F811
    model = _model_folder(dataset, tmp_path)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_image(inputs / "case.nii.gz", np.zeros((8, 64, 32), np.float32), (0.1, 0.004, 0.01))  # no _0000
    with pytest.raises(SystemExit):
        predict_main(["-i", str(inputs), "-o", str(out), "-m", str(model), "--device", "cpu"])
    assert "lacks the channel suffix" in capsys.readouterr().err
    assert not (out / "lesion_areas.csv").exists()


def test_os_errors_are_one_line_naming_the_path(dataset, tmp_path, capsys, monkeypatch):  # noqa: F811
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    model = _model_folder(dataset, tmp_path)
    _one_input(tmp_path / "in")
    # fpn_predict -o naming a file, or a folder under a file
    fails(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(a_file), "-m", str(model)]),
          str(a_file), "must name a folder")
    fails(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(a_file / "out"), "-m", str(model),
                                        "--device", "cpu"]), str(a_file / "out"), "Not a directory")
    # fpn_evaluate -o under a file
    ref, pred = label_folders(tmp_path, 1, 1)
    fails(capsys, lambda: evaluate_main(["-r", str(ref), "-p", str(pred), "-o", str(a_file / "summary.json")]),
          str(a_file), "Not a directory")
    # fpn_train with a results root that is a file
    monkeypatch.setenv("FPN_RESULTS", str(a_file))
    fails(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--device", "cpu", "--num-workers", "0"]),
          str(a_file), "Not a directory")


def test_plan_and_preprocess_os_error_is_one_line(data_roots, tmp_path, capsys, monkeypatch):
    raw, _ = data_roots
    make_raw_dataset(raw, n=2, labelled=(0, 1))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("FPN_PREPROCESSED", str(blocker))
    fails(capsys, lambda: preprocess_main(["-d", "901", "-np", "1", "--no-progress"]), str(blocker))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_folder(dataset, tmp_path, capsys):  # noqa: F811
    model = _model_folder(dataset, tmp_path)
    _one_input(tmp_path / "in")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        fails(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(ro / "out"), "-m", str(model),
                                            "--device", "cpu"]), str(ro / "out"), "Permission denied")
    finally:
        ro.chmod(0o700)


def test_finite_weights_are_required_to_predict(dataset, tmp_path, capsys):  # noqa: F811
    model = _model_folder(dataset, tmp_path)
    path = model / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(path, weights_only=True)
    first = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][first].fill_(float("nan"))
    save_checkpoint(ckpt, path)
    (tmp_path / "in").mkdir()
    fails(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-m", str(model),
                                        "--device", "cpu"]), str(path), "not finite")


def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from fpnunet.cli_utils import run_cli
    from fpnunet.errors import FPNError

    @run_cli
    def writer(argv=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out.nii.gz"))

    fails(capsys, writer, str(tmp_path / "out.nii.gz"), "No space left on device")

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(FPNError, match="cannot write the checkpoint"):
        save_checkpoint({"state_dict": {}}, tmp_path / "c.pth")
    assert not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob(".*"))
