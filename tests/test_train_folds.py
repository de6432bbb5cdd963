"""fpn_train_folds: folds side by side on two CPU "devices", a failing fold reported, flags checked first."""
from __future__ import annotations

import pytest
from test_training import dataset, fold_dir  # noqa: F401  the fixture

from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.train_folds import main


def test_three_folds_on_two_cpu_devices_one_failing(dataset, monkeypatch, capsys):  # noqa: F811
    """Folds 0, 1, 2 on ``cpu cpu``: 0 and 1 train (flags passed through), 2 fails and is named."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    failing = fold_dir(dataset["results"], fold="2")
    failing.mkdir(parents=True)
    (failing / "checkpoint_final.pth").write_bytes(b"a finished run")  # fpn_train refuses without --overwrite
    with pytest.raises(SystemExit) as exc:
        main(["901", "--folds", "0", "1", "2", "--devices", "cpu", "cpu", "--epochs", "1",
              "--iterations-per-epoch", "1", "--pretrained", "none"])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    for fold in ("0", "1"):
        folder = fold_dir(dataset["results"], fold=fold)
        assert load_checkpoint(folder / "checkpoint_final.pth")["epoch"] == 1
        assert (folder / "command.txt").read_text().strip() == (
            f"fpn_train 901 {fold} --epochs 1 --iterations-per-epoch 1 --pretrained none --device cpu --no-progress")
        assert f"[fold {fold} @ cpu] epoch 1/1" in out
        assert f"[fold {fold} @ cpu] done after" in out
    assert "[fold 2 @ cpu] FAILED (exit status 1): error:" in out and "finished run" in out
    assert err.strip().startswith("error: 1 of 3 fold(s) failed: 2 (fold 2: error:")
    assert "  fold 1 (cpu): ok" in out and "  fold 2 (cpu): FAILED" in out
    assert not (fold_dir(dataset["results"], fold="2") / "training_log.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["901", "--folds", "0", "x"], "invalid fold 'x': folds are numbers"),  # the -f/--folds type
    (["901", "--devices", "cpu", "--device", "cuda"], "--device: not a flag of fpn_train_folds"),
    (["901", "--devices", "tpu"], "unknown --device 'tpu'"),
    (["901", "--devices", "cpu", "--epochs", "many"], "flags for fpn_train"),
])
def test_bad_flags_fail_before_any_fold_starts(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "results"))
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
