"""Benchmark: onnxruntime vs PyTorch (CPU) seconds per volume for the exported fold ensemble.

The paper's FPN planned for the patch (random weights and BatchNorm statistics: speed does not
depend on them), ``--folds`` folds, one preprocessed volume ``(1, C, B, depth, A)`` over the whole
en-face plane, no TTA, fp32, ``--threads`` intra-op threads for both runtimes. PyTorch runs the
predictor's prepared networks (BatchNorm folded, as in fpn_predict); onnxruntime the graph of
``fpn_export_model --onnx``. Small default size (a CPU in seconds)::

    python benchmarks/onnx_vs_torch.py --shape 16 128 --depth 64 --patch 16 64 --folds 1 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from fpnunet.checkpoint import model_spec, save_checkpoint
from fpnunet.inference.onnx_export import ensemble_of, export_onnx_bytes
from fpnunet.networks import build_network, network_class
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan
from fpnunet.preprocessed_dataset import PLANS_FILE
from fpnunet.raw_dataset import write_dataset_json
from fpnunet.results_layout import checkpoint_name, fold_folder_name


def _model_folder(root: Path, shape_ba: tuple[int, int], depth: int, patch: tuple[int, int], folds: int) -> Path:
    kwargs = network_class("fpn").plan_kwargs(patch, depth)
    config = Configuration(network=NetworkSpec("fpn", kwargs), patch_size=patch, depth=depth,
                           data_identifier=f"depth{depth}", precision="fp32")
    plan = Plan(dataset_name="Dataset999_Bench", labels={"background": 0, "GA": 1},
                configurations={"fpn": config}, default_configuration="fpn", median_shape=(shape_ba[0], depth,
                                                                                          shape_ba[1]))
    model = root / "fpn__lf1__scratch"
    model.mkdir(parents=True)
    plan.save(model / PLANS_FILE)
    write_dataset_json(model, {"name": "Bench", "channel_names": {"0": "OCT"}, "labels": plan.labels,
                               "file_ending": ".nii.gz"})
    for fold in range(folds):
        torch.manual_seed(fold)
        net = build_network("fpn", 1, 1, **kwargs)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        save_checkpoint({**model_spec("fpn", kwargs, 1, 1, "fpn"), "state_dict": net.state_dict(), "epoch": 1},
                        model / fold_folder_name(fold) / checkpoint_name("final"))
    return model


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=(16, 128), metavar=("B", "A"), help="en-face plane")
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--patch", type=int, nargs=2, default=(16, 64), help="the plan's patch (sizes the network)")
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = _model_folder(Path(tmp), tuple(args.shape), args.depth, tuple(args.patch), args.folds)
        data, report = export_onnx_bytes(model)
        ensemble, predictor = ensemble_of(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 1, args.shape[0], args.depth, args.shape[1])).astype(np.float32)
    xt = torch.from_numpy(x)

    def torch_run() -> None:
        with torch.inference_mode():
            ensemble(xt)

    def ort_run() -> None:
        session.run(None, {"volume": x})

    t_torch = _median_seconds(torch_run, args.repeats)
    t_ort = _median_seconds(ort_run, args.repeats)
    print(f"model.onnx: {report}")
    print(f"volume (B, depth, A) = ({args.shape[0]}, {args.depth}, {args.shape[1]}), {args.folds} fold(s), "
          f"{args.threads} thread(s), torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"PyTorch CPU   {t_torch * 1000:8.1f} ms per volume")
    print(f"onnxruntime   {t_ort * 1000:8.1f} ms per volume  ({t_torch / t_ort:.2f}x PyTorch's speed)")


if __name__ == "__main__":
    main()
