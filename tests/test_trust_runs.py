"""Issue 30 items 1, 5, 6 and the batch-size estimate: nothing is deleted before every check,
--continue applies the schedule flags it records, "up to date" means every file whole."""
from __future__ import annotations

import json

import numpy as np
import pytest
from raw_dataset import make_raw_dataset
from test_preprocessing import make_plan
from test_training import dataset, fold_dir  # noqa: F401  (dataset is a fixture)
from test_trust_flags import BASE, SHORT, fails, fake_finished_run, intact

from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.train import main as train_main
from fpnunet.preprocessed_dataset import RECORD_FILE, PreprocessedDataset
from fpnunet.preprocessing.storage import preprocess_dataset


def _truncate(path, keep: int = 300) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage", ["json", "npy", "seg"])
def test_overwrite_deletes_nothing_when_the_data_is_bad(dataset, capsys, damage):  # noqa: F811
    """Item 1: a corrupt CASE.json or a truncated .npy is found before --overwrite deletes the run."""
    fold = fold_dir(dataset["results"])
    files = fake_finished_run(fold)
    data = dataset["data"]
    bad = {"json": data / "tiny_004.json", "npy": data / "tiny_004.npy", "seg": data / "tiny_001_seg.npy"}[damage]
    if damage == "json":
        bad.write_text('{"case": "tiny_004", ')
    else:
        _truncate(bad)
    err = fails(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--overwrite", *SHORT, *BASE]),
                bad.name)
    assert ("not valid JSON" if damage == "json" else "truncated") in err
    assert "deleting the earlier run" not in capsys.readouterr().out
    assert intact(fold, files) and not (fold / "command.txt").exists()


def test_a_batch_the_machine_cannot_hold_is_refused_before_overwrite(dataset, capsys):  # noqa: F811
    """--batch-size 100000 (hundreds of GiB on the tiny plan): one line, nothing allocated or deleted."""
    fold = fold_dir(dataset["results"])
    files = fake_finished_run(fold)
    err = fails(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--overwrite", "--batch-size",
                                            "100000000", *SHORT, *BASE]), "--batch-size 100000000: one training")
    assert "GiB available" in err and "the plan's batch is 2" in err
    assert intact(fold, files)
    assert train_main(["901", "0", "--pretrained", "none", "--overwrite", "--batch-size", "3", *SHORT, *BASE]) == 0


def test_continue_applies_a_changed_lr_and_says_so(dataset, capsys):  # noqa: F811
    """Item 5: the lr recorded in the run's settings is the one the optimizer and schedule use."""
    assert train_main(["901", "0", "--pretrained", "none", "--lr", "0.1", *SHORT, *BASE]) == 0
    fold = fold_dir(dataset["results"])
    first = load_checkpoint(fold / "checkpoint_latest.pth")
    assert first["scheduler"]["base_lrs"] == [0.1]
    capsys.readouterr()
    assert train_main(["901", "0", "--pretrained", "none", "--continue", "--epochs", "2", "--lr", "0.5",
                       "--weight-decay", "0.001", "--iterations-per-epoch", "1", *BASE]) == 0
    out = capsys.readouterr().out
    assert "applied from epoch 2 on: lr 0.1 -> 0.5, weight decay 0.0001 -> 0.001" in out
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["run_config"]["lr"] == 0.5
    assert ckpt["scheduler"]["base_lrs"] == [0.5]
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 0.001
    lr_epoch2 = [r["lr"] for r in ckpt["log"] if r["epoch"] == 2][0]
    assert lr_epoch2 == pytest.approx(0.5 * (1 - 1 / 2) ** 0.9)  # poly at epoch 2 of 2, at the new level
    run_config = json.loads((fold / "run_config.json").read_text())
    assert run_config["lr"] == 0.5


def test_npy_problem_reads_the_header_and_size_only(tmp_path):
    from fpnunet.preprocessed_dataset import npy_problem

    good = tmp_path / "a.npy"
    np.save(good, np.zeros((4, 5), np.float32))
    assert npy_problem(good) is None
    _truncate(good, 140)
    assert npy_problem(good).startswith("truncated (140 of 208 bytes)")
    obj = tmp_path / "o.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert npy_problem(obj) == "holds Python objects, not numbers"
    (tmp_path / "t.npy").write_bytes(b"garbage")
    assert npy_problem(tmp_path / "t.npy").startswith("not a readable .npy array")


def test_rerun_redoes_cases_with_missing_or_truncated_files(data_roots):
    """Item 6: a case counts as up to date only with every file there and whole."""
    raw, pre = data_roots
    make_raw_dataset(raw, n=4, labelled=(0, 1, 2))
    folder = pre / "Dataset901_Tiny" / "depth16"
    summary = preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    assert summary["depth16"]["written"] == 4
    (folder / "case_000_seg.npy").unlink()  # lost files with the properties still there
    (folder / "case_001_FAF.npy").unlink()
    _truncate(folder / "case_002.npy")
    (folder / RECORD_FILE).unlink()
    summary = preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    assert (summary["depth16"]["written"], summary["depth16"]["skipped"]) == (3, 1)
    ds = PreprocessedDataset.open(folder)
    assert (folder / "case_000_seg.npy").is_file() and (folder / "case_001_FAF.npy").is_file()
    ds.check_cases(ds.case_names)  # every file whole again
