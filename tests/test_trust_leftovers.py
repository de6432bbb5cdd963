"""Issue 30, second pass: plans.json values checked like flags, --overwrite moves the earlier run
aside until the new one has saved a checkpoint, NaN in a preprocessed array, --file-ending a
writer cannot write, and the --encoder-weights refusal without torch's advice."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from test_training import dataset, fold_dir  # noqa: F401  (dataset is a fixture)
from test_trust_errors import fails  # one line, status 1, no traceback, every needle in it
from test_trust_flags import BASE, SHORT, fake_finished_run, intact

from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError
from fpnunet.io import check_output_ending
from fpnunet.networks.encoder_weights import read_encoder_state_dict
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.results_layout import ASIDE_DIR
from fpnunet.training.loop import EpochLoop

TRAIN = ["901", "0", "--pretrained", "none", *SHORT, *BASE]


# ----------------------------------------------------------------------------- (a) plans.json values
def _edit_configuration(plan: dict, key: str, value) -> None:
    conf = plan["configurations"]["fpn"]
    *parents, last = key.split(".")
    for p in parents:
        conf = conf.setdefault(p, {})
    conf[last] = value


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda p: p.update(configurations=[]), "'configurations'"),
    (lambda p: p.update(labels={"background": 0}), "'labels'"),
    (lambda p: _edit_configuration(p, "patch_size", [100000, 100000]), "configurations.fpn.patch_size"),
    (lambda p: _edit_configuration(p, "training.momentum", 5.0), "configurations.fpn.training.momentum"),
    (lambda p: _edit_configuration(p, "augmentation.scale", [-1, 0]), "configurations.fpn.augmentation.scale"),
    (lambda p: _edit_configuration(p, "training.lr", float("nan")), "configurations.fpn.training.lr"),
])
def test_plan_values_are_checked_like_flags(dataset, capsys, edit, needle):  # noqa: F811
    path = dataset["pre"] / "plans.json"
    plan = json.loads(path.read_text())
    edit(plan)
    path.write_text(json.dumps(plan))
    fails(capsys, lambda: train_main(TRAIN), "plans.json", needle)
    assert not fold_dir(dataset["results"]).exists()  # refused before the fold (or a worker) is touched


# ----------------------------------------------------------------------------- (g) --overwrite moves aside
def test_overwrite_keeps_the_earlier_run_when_the_new_one_fails_before_its_first_checkpoint(
        dataset, capsys, monkeypatch):  # noqa: F811
    fold = fold_dir(dataset["results"])
    files = fake_finished_run(fold)

    def broken(self):
        raise FPNError("disk gone during the first epoch")

    monkeypatch.setattr(EpochLoop, "run", broken)
    with pytest.raises(SystemExit):
        train_main([*TRAIN, "--overwrite"])
    assert "earlier run in" in capsys.readouterr().err
    assert intact(fold, files)
    assert not (fold / ASIDE_DIR).exists() and not (fold / "command.txt").exists()
    assert not (fold / "run_config.json").exists()


def test_overwrite_removes_the_earlier_run_once_the_new_one_has_a_checkpoint(dataset):  # noqa: F811
    fold = fold_dir(dataset["results"])
    fake_finished_run(fold)
    assert train_main([*TRAIN, "--overwrite"]) == 0
    assert not (fold / ASIDE_DIR).exists()
    assert (fold / "checkpoint_final.pth").read_bytes() != b"final"


# ----------------------------------------------------------------------------- (f) NaN in a preprocessed array
def test_nan_in_a_preprocessed_volume_is_one_line_naming_it(dataset, capsys):  # noqa: F811
    path = dataset["data"] / "tiny_002.npy"
    vol = np.load(path)
    vol[0, 1, 2, 3] = np.nan
    np.save(path, vol)
    with pytest.raises(FPNError, match="tiny_002.npy: holds NaN"):
        PreprocessedDataset(dataset["data"]).load_volume("tiny_002", mmap=True)
    fails(capsys, lambda: train_main(TRAIN), "tiny_002.npy", "NaN")


def test_an_unchanged_volume_is_scanned_for_nan_once_and_a_changed_one_again(dataset, monkeypatch):  # noqa: F811
    path = dataset["data"] / "tiny_003.npy"
    reader = PreprocessedDataset(dataset["data"])
    reader.load_volume("tiny_003")
    scans = []
    real = np.isfinite
    monkeypatch.setattr(np, "isfinite", lambda a: scans.append(a.size) or real(a))
    reader.load_volume("tiny_003")  # validation reloads it every validation epoch: no second scan
    assert scans == []
    vol = np.load(path)
    vol[0, 0, 0, 0] = np.inf
    np.save(path, vol)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a later write, even on a coarse clock
    with pytest.raises(FPNError, match="tiny_003.npy: holds NaN or Inf"):
        reader.load_volume("tiny_003")
    assert scans


# ----------------------------------------------------------------------------- (d) --file-ending
def test_an_ending_no_writer_knows_is_refused_before_the_model_runs(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    fails(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(tmp_path / "m"),
                                           "--file-ending", ".exe"]), "--file-ending '.exe'", "cannot write")
    assert not out.exists()
    for ok in (".nii.gz", ".png", ".mha", None):
        check_output_ending(ok)


# ----------------------------------------------------------------------------- (e) --encoder-weights refusal
def test_encoder_weights_refusal_gives_no_unpickling_advice(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2), "extra": argparse.Namespace(a=1)}, path)
    with pytest.raises(FPNError) as exc:
        read_encoder_state_dict(path)
    msg = str(exc.value)
    assert msg.startswith("--encoder-weights ") and str(path) in msg and "argparse" in msg, msg
    assert "weights_only" not in msg and "\x1b" not in msg and "can still be loaded" not in msg, msg
    assert len(msg.splitlines()) == 1
