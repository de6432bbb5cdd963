"""Issue 12 item 2: a half-preprocessed folder is never used, and splits are never written over it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from raw_dataset import make_raw_dataset
from test_preprocessing import make_plan
from test_training import dataset  # noqa: F401  (a fixture)

from fpnunet.commands.pretrain import main as pretrain_main
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import RECORD_FILE, PreprocessedDataset
from fpnunet.preprocessing.storage import preprocess_dataset

BASE = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--epochs", "1", "--iterations-per-epoch", "1"]


def refused(capsys, call, needle: str) -> str:
    with pytest.raises(SystemExit) as exc:
        call()
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err
    assert needle in err and "fpn_plan_and_preprocess" in err
    return err


@pytest.mark.parametrize("remove", ["tiny_002.json", "tiny_003_FAF.npy", "tiny_001_seg.npy", RECORD_FILE])
def test_incomplete_folder_is_refused_and_no_splits_are_written(dataset, capsys, remove):  # noqa: F811
    (dataset["data"] / remove).unlink()
    refused(capsys, lambda: train_main(["901", "0", "--pretrained", "none", *BASE]), remove)
    assert not (dataset["pre"] / "splits_final.json").exists()
    assert not dataset["results"].exists()
    if remove != "tiny_001_seg.npy":
        refused(capsys, lambda: pretrain_main(["901", *BASE]), remove)
        assert not dataset["results"].exists()


def test_killed_preprocessing_leaves_no_completion_record(data_roots, monkeypatch):
    import fpnunet.preprocessing.storage as storage

    raw, pre = data_roots
    make_raw_dataset(raw, n=3, labelled=(0, 1))
    folder = pre / "Dataset901_Tiny" / "depth16"
    preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    record = json.loads((folder / RECORD_FILE).read_text())
    assert sorted(record["cases"]) == ["case_000", "case_001", "case_002"]
    assert record["cases"]["case_002"] == {"labelled": False, "enface": ["FAF"]}
    assert PreprocessedDataset.open(folder).labelled == ["case_000", "case_001"]

    def killed_after_one(func, tasks, *args, **kwargs):
        yield func(tasks[0])
        raise KeyboardInterrupt  # the run dies part-way

    monkeypatch.setattr(storage, "parallel_map", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False, clean=True)
    assert (folder / "case_000.json").is_file() and not (folder / "case_001.json").exists()
    assert not (folder / RECORD_FILE).exists()
    with pytest.raises(FPNError, match="preprocessing did not finish"):
        PreprocessedDataset.open(folder)


def test_stale_generated_splits_over_fewer_cases_are_refused(dataset, capsys):  # noqa: F811
    stale = [{"train": ["tiny_000", "tiny_001"], "val": ["tiny_002"]},
             {"train": ["tiny_002"], "val": ["tiny_000", "tiny_001"]}]
    (dataset["pre"] / "splits_final.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit):
        train_main(["901", "0", "--pretrained", "none", *BASE])
    err = capsys.readouterr().err
    assert "labelled case(s) in no fold" in err and "splits_final.json" in err
    assert json.loads((dataset["pre"] / "splits_final.json").read_text()) == stale


def test_reader_lists_cases_of_a_complete_folder(dataset):  # noqa: F811
    folder = PreprocessedDataset.open(Path(dataset["data"]))
    assert folder.labelled == [f"tiny_{i:03d}" for i in range(6)] == folder.with_enface("FAF")
