"""Issue 12 item 1: a model file cannot run code. Every path that loads a .pth refuses a pickle
payload (and the payload's side effect never happens); old-format checkpoints get the conversion
command, which converts them without unpickling anything but numpy values."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import dataset, fold_dir, tiny_kwargs  # noqa: F401  (dataset is a fixture)

from fpnunet.checkpoint import load_checkpoint, model_spec, rng_state, save_checkpoint, set_rng_state
from fpnunet.commands.convert_checkpoint import main as convert_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.pretrain import main as pretrain_main
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError
from fpnunet.networks import build_network


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): the stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A .pth that looks like an fpnunet checkpoint but carries the payload."""
    net = build_network("fpn", 1, 2, **tiny_kwargs())
    state = {**model_spec("fpn", tiny_kwargs(), 1, 2, "fpn"), "state_dict": net.state_dict(), "epoch": 1,
             "payload": Payload(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def refused(capsys, call, marker: Path, path: Path) -> str:
    with pytest.raises(SystemExit) as exc:
        call()
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert not marker.exists(), "the pickle payload ran"
    assert str(path) in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("legacy", [False, True])
def test_payload_is_refused_by_fpn_predict(dataset, tmp_path, capsys, legacy):  # noqa: F811
    marker = tmp_path / "marker"
    model = tmp_path / "model"
    write_payload(model / "fold_0" / "checkpoint_final.pth", marker, legacy)
    shutil.copy(dataset["pre"] / "plans.json", model / "plans.json")
    (tmp_path / "in").mkdir()
    err = refused(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                                "-m", str(model), "--device", "cpu"]),
                  marker, model / "fold_0" / "checkpoint_final.pth")
    assert "refused" in err or "not a readable" in err


def test_payload_is_refused_by_every_training_path(dataset, tmp_path, capsys):  # noqa: F811
    marker = tmp_path / "marker"
    base = ["--device", "cpu", "--num-workers", "0", "--no-progress"]
    # --pretrained PATH
    pth = write_payload(tmp_path / "weights.pth", marker)
    err = refused(capsys, lambda: train_main(["901", "0", "--pretrained", str(pth), *base]), marker, pth)
    assert "it would import" in err and "open" in err
    # --continue
    latest = write_payload(fold_dir(dataset["results"]) / "checkpoint_latest.pth", marker)
    refused(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--continue", *base]), marker, latest)
    # --val
    final = write_payload(fold_dir(dataset["results"]) / "checkpoint_final.pth", marker)
    refused(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--val", *base]), marker, final)
    # fpn_pretrain --continue
    pre = write_payload(dataset["results"] / "pretrain__fpn__FAF" / "fold_all" / "checkpoint_latest.pth", marker)
    refused(capsys, lambda: pretrain_main(["901", "--continue", *base]), marker, pre)
    # the converter refuses it too
    refused(capsys, lambda: convert_main([str(pth)]), marker, pth)


def test_checkpoint_holds_only_plain_data_and_rng_round_trips(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    save_checkpoint({**model_spec("fpn", tiny_kwargs(), 1, 2, "fpn"), "state_dict": {}, "rng": state,
                     "log": [{"val_dice": np.float64(0.5)}]}, tmp_path / "c.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.load(tmp_path / "c.pth", weights_only=True)  # loads without pickle
    ckpt = load_checkpoint(tmp_path / "c.pth")
    assert ckpt["format"]["version"] == 2 and type(ckpt["log"][0]["val_dice"]) is float
    set_rng_state(ckpt["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint({"x": np.zeros(3)}, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()


def test_old_format_checkpoint_names_the_conversion_command(tmp_path, capsys):
    net = build_network("fpn", 1, 2, **tiny_kwargs())
    old = {**model_spec("fpn", tiny_kwargs(), 1, 2, "fpn"), "state_dict": net.state_dict(), "epoch": 3,
           "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                   "cuda": None}, "best_score": np.float64(0.7)}
    path = tmp_path / "checkpoint_final.pth"
    torch.save(old, path)
    with pytest.raises(FPNError, match=f"fpn_convert_checkpoint {path}"):
        load_checkpoint(path)
    assert convert_main([str(path)]) == 0
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["best_score"] == 0.7
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in net.state_dict().items())
    np.random.seed(5)
    set_rng_state(ckpt["rng"])
    np.random.set_state(old["rng"]["numpy"])
    a = np.random.rand()
    set_rng_state(ckpt["rng"])
    assert np.random.rand() == a
    assert not list(tmp_path.glob(".*"))  # written atomically, no temp file left
