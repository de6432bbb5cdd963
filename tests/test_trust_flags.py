"""Issue 12 items 3, 4, 5 and part of 9: flags are checked before any folder is touched, a
diverging run stops keeping its last good checkpoint, one run per fold (lock), temp files of
killed runs go away, --pretrained of another network needs --partial-load."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import dataset, fold_dir, tiny_kwargs  # noqa: F401  (dataset is a fixture)

from fpnunet.checkpoint import load_checkpoint, model_spec, save_checkpoint
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.pretrain import main as pretrain_main
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError
from fpnunet.networks import build_network, network_class
from fpnunet.results_layout import LOCK_FILE, FoldLock
from fpnunet.training.loop import EpochLoop
from fpnunet.training.pretrained import load_pretrained

BASE = ["--device", "cpu", "--num-workers", "0", "--no-progress"]
SHORT = ["--epochs", "1", "--iterations-per-epoch", "1"]


def fake_finished_run(folder: Path) -> dict[str, bytes]:
    """A 'finished run' (its files' bytes); the checks under test must fail before reading them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"checkpoint_final.pth": b"final", "checkpoint_latest.pth": b"latest", "training_log.csv": b"epoch\n1\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def intact(folder: Path, files: dict[str, bytes]) -> bool:
    return all((folder / n).is_file() and (folder / n).read_bytes() == d for n, d in files.items())


def fails(capsys, call, needle: str) -> str:
    with pytest.raises(SystemExit) as exc:
        call()
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


TRAIN_BAD = [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-3"], "--epochs"),
    (["--iterations-per-epoch", "0"], "--iterations-per-epoch"), (["--batch-size", "0"], "--batch-size"),
    (["--bn-recalibration", "-1"], "--bn-recalibration"), (["--val-every", "-1"], "--val-every"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--label-fraction", "0"], "--label-fraction"), (["--num-workers", "-2"], "--num-workers"),
    (["--continue"], "--continue and --overwrite"),
    (["--pretrained", "/no/such/weights.pth"], "/no/such/weights.pth"),
]


def test_bad_flags_with_overwrite_leave_a_finished_run_intact(dataset, tmp_path, capsys):  # noqa: F811
    fold = fold_dir(dataset["results"])
    files = fake_finished_run(fold)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    for flags, needle in [*TRAIN_BAD, (["--pretrained", str(garbage)], str(garbage))]:
        pretrained = [] if "--pretrained" in flags else ["--pretrained", "none"]
        fails(capsys, lambda f=flags, p=pretrained: train_main(["901", "0", "--overwrite", *p, *BASE, *f]), needle)
        assert intact(fold, files), flags
    pre_fold = dataset["results"] / "pretrain__fpn__FAF" / "fold_all"
    pre_files = fake_finished_run(pre_fold)
    for flags, needle in [(["--epochs", "0"], "--epochs"), (["--lr", "nan"], "--lr"),
                          (["--pictures", "-1"], "--pictures"), (["--continue"], "--continue and --overwrite"),
                          (["--bn-recalibration", "-1"], "--bn-recalibration")]:
        fails(capsys, lambda f=flags: pretrain_main(["901", "--overwrite", *BASE, *f]), needle)
        assert intact(pre_fold, pre_files), flags


def test_bad_pretrained_file_with_overwrite_leaves_its_run_intact(dataset, tmp_path, capsys):  # noqa: F811
    from fpnunet.results_layout import pretrained_tag

    weights = tmp_path / "lachinov.pth"  # another network's checkpoint sharing a few tensors with the FPN
    kw = network_class("lachinov").plan_kwargs((8, 32), 64, (1.0, 1.0))
    shared = dict(list(build_network("fpn", 1, 2, **tiny_kwargs()).state_dict().items())[:10])
    save_checkpoint({**model_spec("lachinov", kw, 1, 2, "lachinov"), "state_dict": shared}, weights)
    fold = fold_dir(dataset["results"], f"fpn__lf1__{pretrained_tag(weights)}")
    files = fake_finished_run(fold)
    err = fails(capsys, lambda: train_main(["901", "0", "--overwrite", "--pretrained", str(weights), *BASE]),
                "--partial-load")
    assert "'lachinov'" in err and intact(fold, files)
    # the partial load, when asked for, says how much it loaded
    model = build_network("fpn", 1, 2, **tiny_kwargs())
    report = load_pretrained(model, weights, network="fpn", partial=True)
    assert report.num_loaded == 10 < report.total / 2
    assert f"loaded {report.num_loaded} of {report.total} tensors" in capsys.readouterr().out
    with pytest.raises(FPNError, match="--partial-load"):
        load_pretrained(model, weights, network=None)  # a plain share check catches it without the name too


@pytest.mark.parametrize("threshold", ["nan", "2", "0", "1", "-0.5"])
def test_predict_threshold_outside_0_1_is_refused(tmp_path, capsys, threshold):
    out = tmp_path / "out"
    fails(capsys, lambda: predict_main(["-i", str(tmp_path), "-o", str(out), "-m", str(tmp_path),
                                        "--threshold", threshold]), "--threshold")
    assert not out.exists()


def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(dataset, monkeypatch, capsys):  # noqa: F811
    steps = {"n": 0}
    original = EpochLoop.step

    def nan_from_the_third_step(self, batch):
        steps["n"] += 1
        return math.nan if steps["n"] > 2 else original(self, batch)

    monkeypatch.setattr(EpochLoop, "step", nan_from_the_third_step)
    fold = fold_dir(dataset["results"])
    err = fails(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--epochs", "3",
                                            "--iterations-per-epoch", "2", *BASE]), "training diverged")
    assert "checkpoint_latest.pth (epoch 1) is the last good checkpoint" in err
    ckpt = load_checkpoint(fold / "checkpoint_latest.pth")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values()
                                      if t.is_floating_point())
    assert ckpt["run_config"]["epochs"] == 3 and ckpt["run_config"]["lr"] == 0.1
    assert not (fold / "checkpoint_final.pth").exists() and not (fold / LOCK_FILE).exists()
    monkeypatch.setattr(EpochLoop, "step", original)
    # an absurd learning rate: stopped with the same clear error, never a NaN model with exit 0
    fails(capsys, lambda: train_main(["901", "1", "--pretrained", "none", "--lr", "1e30", "--epochs", "2",
                                      "--iterations-per-epoch", "2", *BASE]), "training diverged")
    assert not (fold_dir(dataset["results"], fold="1") / "checkpoint_final.pth").exists()


def test_second_run_on_a_fold_is_refused_and_a_stale_lock_taken_over(dataset, capsys):  # noqa: F811
    fold = fold_dir(dataset["results"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fold.mkdir(parents=True)
        (fold / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": __import__("socket").gethostname(),
                                                  "started": "now", "command": "fpn_train 901 0"}))
        err = fails(capsys, lambda: train_main(["901", "0", "--pretrained", "none", *SHORT, *BASE]),
                    f"PID {other.pid}")
        assert "in use by another run" in err and not (fold / "checkpoint_latest.pth").exists()
    finally:
        other.kill()
        other.wait()
    # the owner died (kill -9): its lock is taken over, its temp files are removed
    temp = fold / ".checkpoint_latest.pth.k1ll3d.pth"
    temp.write_bytes(b"x" * 100)
    assert train_main(["901", "0", "--pretrained", "none", *SHORT, *BASE]) == 0
    out = capsys.readouterr().out
    assert f"from PID {other.pid}, which is no longer running" in out
    assert not temp.exists() and not (fold / LOCK_FILE).exists() and (fold / "checkpoint_final.pth").is_file()


def test_fold_lock_is_exclusive_within_a_host(tmp_path):
    a = FoldLock(tmp_path / "fold_0").acquire()
    record = json.loads((tmp_path / "fold_0" / LOCK_FILE).read_text())
    assert record["pid"] == __import__("os").getpid()
    code = ("import sys; from fpnunet.results_layout import FoldLock; from fpnunet.errors import FPNError\n"
            "try:\n    FoldLock(sys.argv[1]).acquire()\nexcept FPNError as e:\n    print(e); sys.exit(3)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fold_0")], capture_output=True, text=True)
    assert res.returncode == 3 and f"PID {record['pid']}" in res.stdout
    a.release()
    assert not (tmp_path / "fold_0" / LOCK_FILE).exists()
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fold_0")], capture_output=True, text=True)
    assert res.returncode == 0
