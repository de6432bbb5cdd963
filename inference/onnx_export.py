"""ONNX export of a model folder's fold ensemble, and the steps that stay outside the graph.

The graph (``model.onnx``, opset 17) maps a preprocessed volume batch ``volume`` ``(N, C, B, depth,
A)`` float32 to en-face probabilities ``probabilities`` ``(N, K, B, A)``: every exported fold with
its BatchNorm folded into the convolutions (:mod:`.fast`), sigmoid (one class) or softmax, averaged
over the folds. ``N``, ``B`` and ``A`` are dynamic; ``B`` and ``A`` must be multiples of the
network's input divisors (``metadata_props``: ``divisor_b``, ``divisor_a``), ``C`` and ``depth`` are
fixed by the plan.

Outside the graph, done by :func:`onnx_input` and :func:`onnx_output` (numpy and scipy only, no
torch): reading the file and moving the depth axis to ``(B, D, A)``; retina-band detection,
z-score normalisation over the band, depth crop and depth resampling (the plan's preprocessing,
:func:`fpnunet.preprocessing.preprocess.preprocess_volume`); zero-padding the en-face plane to the
divisors and cropping it back; flip test-time augmentation (run the graph on the flipped inputs and
average, if wanted); the threshold or arg-max that makes the label map.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpnunet.plans.plan import Plan
from fpnunet.preprocessing.preprocess import preprocess_volume

from .predictor import Predictor
from .sliding_window import _to_probabilities

__all__ = ["EnsembleProbabilities", "export_onnx_bytes", "onnx_input", "onnx_output", "OPSET"]

OPSET = 17


class EnsembleProbabilities(nn.Module):
    """The folds' mean probabilities ``(N, K, B, A)`` of ``(N, C, B, depth, A)``."""

    def __init__(self, networks: list[nn.Module], num_outputs: int) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.num_outputs = num_outputs

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        total = None
        for net in self.networks:
            p = _to_probabilities(net(volume), self.num_outputs)
            total = p if total is None else total + p
        return total / len(self.networks)


def ensemble_of(model_dir: str | os.PathLike, folds: list[str] | None = None,
                checkpoint: str = "final") -> tuple[EnsembleProbabilities, Predictor]:
    """The fp32 CPU ensemble (BatchNorm folded, contiguous layout) and the predictor it came from."""
    predictor = Predictor.from_model_folder(model_dir, folds=folds, checkpoint=checkpoint, device="cpu", tta=False,
                                            precision="fp32", channels_last=False)
    return EnsembleProbabilities(predictor.networks, predictor.num_outputs).eval(), predictor


def export_onnx_bytes(model_dir: str | os.PathLike, folds: list[str] | None = None, checkpoint: str = "final",
                      check: bool = True) -> tuple[bytes, str]:
    """``model.onnx``'s bytes and a one-line report (with ``check``: the largest difference from
    PyTorch on a random input, run with onnxruntime)."""
    import onnx  # lazy: start-up time

    ensemble, predictor = ensemble_of(model_dir, folds, checkpoint)
    db, da = predictor.divisors
    cfg = predictor.config
    b, a = _multiple(cfg.patch_size[0], db), _multiple(cfg.patch_size[1], da)
    example = torch.randn(1, predictor.input_channels, b, cfg.depth, a, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():  # the tracer's notes on shape arithmetic (constants here)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(ensemble, (example,), buf, input_names=["volume"], output_names=["probabilities"],
                          dynamic_axes={"volume": {0: "N", 2: "B", 4: "A"}, "probabilities": {0: "N", 2: "B", 3: "A"}},
                          opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    for key, value in (("divisor_b", db), ("divisor_a", da), ("depth", cfg.depth), ("num_outputs",
                       predictor.num_outputs), ("folds", ",".join(predictor.folds)), ("checkpoint", checkpoint)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    data = model.SerializeToString()
    report = f"{len(predictor.networks)} fold(s), opset {OPSET}, input (N, {predictor.input_channels}, B, " \
             f"{cfg.depth}, A), B multiple of {db}, A multiple of {da}"
    if check:
        diff = parity(data, ensemble, torch.randn(2, predictor.input_channels, 2 * b, cfg.depth, a,
                                                  generator=torch.Generator().manual_seed(1)).numpy())
        report += f"; max abs difference from PyTorch {diff:.2e}"
    return data, report


def parity(onnx_bytes: bytes, ensemble: nn.Module, x: np.ndarray) -> float:
    """The largest absolute difference between onnxruntime and PyTorch on ``x``."""
    import onnxruntime as ort  # lazy: start-up time

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"volume": x.astype(np.float32)})
    with torch.no_grad():
        want = ensemble(torch.from_numpy(x.astype(np.float32))).numpy()
    return float(np.abs(got - want).max())


def _multiple(n: int, d: int) -> int:
    return -(-int(n) // int(d)) * int(d)


def onnx_input(channels: list[np.ndarray], plan: Plan | str | Path, divisors: tuple[int, int],
               configuration: str | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Raw channels ``(B, D, A)`` -> the graph's input ``(1, C, B', depth, A')`` and the ``(b0, a0, B, A)``
    that :func:`onnx_output` crops back. ``plan``: the model folder's ``plans.json`` or a :class:`Plan`;
    ``divisors``: the graph's ``divisor_b``/``divisor_a`` metadata."""
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    config = plan.configuration(configuration or plan.default_configuration)
    volume, _ = preprocess_volume(list(channels), plan, config)
    _, b, _, a = volume.shape
    pb, pa = _multiple(b, divisors[0]) - b, _multiple(a, divisors[1]) - a
    b0, a0 = pb // 2, pa // 2  # evenly on both sides, as the predictor pads
    padded = np.pad(volume, ((0, 0), (b0, pb - b0), (0, 0), (a0, pa - a0)))
    return padded[None].astype(np.float32), (b0, a0, b, a)


def onnx_output(probabilities: np.ndarray, crop: tuple[int, int, int, int]) -> np.ndarray:
    """The graph's ``(1, K, B', A')`` output cropped back to the volume's plane ``(K, B, A)``."""
    b0, a0, b, a = crop
    return np.asarray(probabilities)[0, :, b0:b0 + b, a0:a0 + a]


def describe(model: Any) -> dict[str, str]:
    """An ONNX model's metadata (``divisor_b``, ``divisor_a``, ``depth``, ``num_outputs``, ``folds``)."""
    return {p.key: p.value for p in model.metadata_props}
