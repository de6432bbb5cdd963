"""Issue 30, tracebacks: model files that load as plain data but hold nonsense, a text file as
--pretrained, and flags that passed validation (--heartbeat, --gpu-memory-gb) are one line each."""
from __future__ import annotations

import pytest
import torch
from test_predict import _make_model_folder, _run, _volume_file
from test_training import dataset  # noqa: F401  (a fixture)
from test_trust_flags import BASE, SHORT, fails

from fpnunet.commands.plan_and_preprocess import main as plan_main
from fpnunet.commands.train import main as train_main


def _huge_stride0() -> torch.Tensor:
    return torch.zeros(1).as_strided((2**20, 2**20), (0, 0))  # 2^40 elements on 4 bytes


NONSENSE = [
    ({"network": "fpn"}, "'network' must be {name, kwargs}"),
    ({"num_outputs": -2}, "'num_outputs' must be a whole number in 1..4096"),
    ({"in_channels": "1"}, "'in_channels' must be a whole number"),
    ({"state_dict": "weights"}, "'state_dict' must map names to tensors"),
    ({"format": {"version": "abc"}}, "format version 'abc' is not a whole number"),
    ({"state_dict": {"w": _huge_stride0()}}, "tensor w claims 1099511627776 elements"),
]


@pytest.mark.parametrize(("change", "needle"), NONSENSE)
def test_nonsense_checkpoint_is_one_line(tmp_path, capsys, change, needle):
    model_dir = _make_model_folder(tmp_path / "results", folds=1)
    path = model_dir / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(change)
    torch.save(ckpt, path)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    _volume_file(in_dir / "c_0000.nii.gz", shape=(6, 24, 20))
    assert _run(["-i", str(in_dir), "-o", str(tmp_path / "out"), "-m", str(model_dir), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{path}: " in err, err
    assert needle in err, err
    assert not (tmp_path / "out").exists()


def test_text_file_as_pretrained_is_one_line(dataset, capsys, tmp_path):  # noqa: F811
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    fails(capsys, lambda: train_main(["901", "0", "--pretrained", str(text), *SHORT, *BASE]),
          f"{text}: not a readable checkpoint")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_heartbeat_is_refused(dataset, capsys, value):  # noqa: F811
    fails(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--heartbeat", value, *SHORT, *BASE]),
          "--heartbeat must be a finite number >= 0")
    assert not dataset["results"].exists()


@pytest.mark.parametrize("value", ["nan", "0", "-4", "inf"])
def test_bad_gpu_memory_is_refused(capsys, value):
    fails(capsys, lambda: plan_main(["-d", "901", "--gpu-memory-gb", value]), "--gpu-memory-gb must be a finite")
