"""ONNX export of the fold ensemble: parity with PyTorch through onnxruntime, dynamic batch and plane."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from test_predict import _make_model_folder

from fpnunet.inference.onnx_export import describe, export_onnx_bytes, onnx_input, onnx_output
from fpnunet.inference.predictor import Predictor
from fpnunet.networks import network_class

PARITY_BOUND = 1e-4
"""Largest allowed |onnxruntime - PyTorch| of a probability (fp32 on the CPU)."""


def _fpn_model(tmp_path):
    kwargs = network_class("fpn").plan_kwargs((8, 32), 64)
    kwargs["features"] = [4, 8, 16, 32][: len(kwargs["features"])]
    model_dir = _make_model_folder(tmp_path / "results", folds=2, network="fpn", kwargs=kwargs, depth=64)
    for fold in ("0", "1"):  # non-trivial BatchNorm statistics, so that folding them matters
        path = model_dir / f"fold_{fold}" / "checkpoint_final.pth"
        ckpt = torch.load(path, weights_only=True)
        g = torch.Generator().manual_seed(int(fold))
        for k, v in ckpt["state_dict"].items():
            if k.endswith("running_mean"):
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
            elif k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        torch.save(ckpt, path)
    return model_dir


def test_onnx_matches_pytorch_on_raw_volumes(tmp_path, capsys):
    model_dir = _fpn_model(tmp_path)
    data, report = export_onnx_bytes(model_dir)
    assert "2 fold(s)" in report and "max abs difference from PyTorch" in report
    model = onnx.load_from_string(data)
    meta = describe(model)
    assert meta["folds"] == "0,1" and int(meta["depth"]) == 64
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded into the convolutions
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    divisors = (int(meta["divisor_b"]), int(meta["divisor_a"]))
    predictor = Predictor.from_model_folder(model_dir, device="cpu", tta=False, window="whole", precision="fp32")
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in ((8, 80, 32), (11, 70, 45), (16, 64, 64)):  # planes that need padding, and a larger one
        raw = rng.normal(size=shape).astype(np.float32)
        raw[:, 20:40] += 2.0
        x, crop = onnx_input([raw], model_dir / "plans.json", divisors)
        (probs,) = session.run(None, {"volume": x})
        got = onnx_output(probs, crop)
        want, _ = predictor.predict_raw([raw])
        assert got.shape == want.shape == (1, shape[0], shape[2])
        worst = max(worst, float(np.abs(got - want).max()))
    batch = np.concatenate([x, x], 0)  # dynamic N
    (two,) = session.run(None, {"volume": batch})
    np.testing.assert_allclose(two[0], two[1], atol=1e-6)
    with capsys.disabled():
        print(f"\nONNX parity: max abs difference from PyTorch {worst:.2e} (bound {PARITY_BOUND:g})")
    assert worst < PARITY_BOUND


def test_export_model_onnx_travels_in_the_package(tmp_path, monkeypatch, capsys):
    import zipfile

    from fpnunet.commands.export_model import main as export_main
    from fpnunet.commands.install_model import main as install_main

    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "installed"))
    model_dir = _fpn_model(tmp_path)
    out = tmp_path / "m.zip"
    assert export_main(["-m", str(model_dir), "-o", str(out), "--licence", "x", "--onnx", "-f", "1"]) == 0
    assert "model.onnx: 1 fold(s)" in capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        assert describe(onnx.load_from_string(zf.read("model.onnx")))["folds"] == "1"
    assert install_main([str(out)]) == 0
    installed = tmp_path / "installed" / "Dataset999_Test" / model_dir.name
    assert (installed / "model.onnx").is_file() and [p.name for p in installed.glob("fold_*")] == ["fold_1"]
