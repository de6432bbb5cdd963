"""Benchmark prediction: seconds per volume for one fold, one fold + TTA and five folds + TTA.

Defaults are a Spectralis volume (49 x 496 x 512 raw, depth reduced by a plan to 128) and the
paper's FPN planned for patch 32 x 256 (random weights: speed does not depend on them)::

    python benchmarks/predict.py                                   # full size (slow on a CPU)
    python benchmarks/predict.py --cases 2 --shape 16 128 --depth 64 --patch 16 64   # small

The volumes are preprocessed-shaped ``(1, B, depth, A)`` random tensors, so the figures are the
model's share (sliding window, TTA, ensemble); ``--raw-depth D`` also times the plan's
preprocessing of a raw ``(B, D, A)`` volume when ``fpnunet.preprocessing`` is present.
The goal checked at the end: five folds with TTA (20 forwards per window, batched 4 at a time)
take at most 1.2 x twenty single forwards (20 x one fold without TTA).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from fpnunet.inference import Predictor, window_starts
from fpnunet.networks import build_network, network_class
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (process) seconds of ``repeats`` calls of ``fn`` (after one warm-up call).

    On a shared CPU the process time is the steadier figure (it does not count time spent
    waiting for a core); on CUDA only the wall time means anything.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3, help="volumes timed per setting (median)")
    p.add_argument("--shape", type=int, nargs=2, default=(49, 512), metavar=("B", "A"), help="en-face plane")
    p.add_argument("--depth", type=int, default=128, help="depth after the plan's reduction")
    p.add_argument("--patch", type=int, nargs=2, default=(32, 256), metavar=("PB", "PA"), help="en-face patch")
    p.add_argument("--spacing", type=float, nargs=2, default=(0.12, 0.0113), help="en-face spacing (mm)")
    p.add_argument("--network", default="fpn")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--raw-depth", type=int, default=0, help="also time preprocessing of (B, RAW_DEPTH, A)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kwargs = network_class(args.network).plan_kwargs(tuple(args.patch), args.depth, tuple(args.spacing))
    config = Configuration(network=NetworkSpec(args.network, kwargs), patch_size=tuple(args.patch),
                           depth=args.depth, data_identifier=f"depth{args.depth}")
    plan = Plan(dataset_name="Benchmark", labels={"background": 0, "GA": 1}, depth_crop=0,
                configurations={args.network: config}, default_configuration=args.network)
    nets = []
    for fold in range(args.folds):
        torch.manual_seed(fold)
        nets.append(build_network(args.network, 1, 1, **kwargs).eval())
    b, a = args.shape
    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, b, args.depth, a)).astype(np.float32) for _ in range(args.cases)]
    one = Predictor(nets[:1], plan, args.network, device=args.device, tta=False)
    one_tta = Predictor(nets[:1], plan, args.network, device=args.device, tta=True)
    five_tta = Predictor(nets, plan, args.network, device=args.device, tta=True)
    sync = torch.cuda.synchronize if one.device.type == "cuda" else (lambda: None)
    n_windows = len(window_starts(max(b, args.patch[0]), args.patch[0])) * len(
        window_starts(max(a, args.patch[1]), args.patch[1]))

    print(f"network {args.network} {kwargs}\nvolume (C, B, D, A) = (1, {b}, {args.depth}, {a}), "
          f"patch {tuple(args.patch)}, {n_windows} window(s), device {one.device}, amp {one.amp}, "
          f"torch threads {torch.get_num_threads()}, MALLOC_MMAP_THRESHOLD_="
          f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")

    window = torch.randn(1, 1, args.patch[0], args.depth, args.patch[1], device=one.device)
    net0 = one.networks[0]

    def single_forward() -> None:
        with torch.inference_mode(), torch.autocast(one.device.type, torch.bfloat16, enabled=one.amp):
            net0(window)
        sync()

    fwd = _time(single_forward, max(3, args.cases))
    results: dict[str, tuple[float, float]] = {}
    print(f"{'':>18}  {'wall s':>8}  {'CPU s':>8}  (per volume, median of {args.cases})")
    for name, pred in (("1 fold, no TTA", one), ("1 fold + TTA", one_tta), (f"{args.folds} folds + TTA", five_tta)):
        vols = iter(volumes * 2)
        results[name] = _time(lambda pred=pred, vols=vols: (pred.predict_preprocessed(next(vols)), sync()), args.cases)
        print(f"{name:>18}  {results[name][0]:8.3f}  {results[name][1]:8.3f}")
    forwards = 4 * args.folds
    print(f"{'single forward':>18}  {fwd[0]:8.3f}  {fwd[1]:8.3f}  (one window; x {n_windows} windows = "
          f"{fwd[0] * n_windows:.3f} / {fwd[1] * n_windows:.3f})")
    for k, unit in ((0, "wall"), (1, "CPU")):
        t1 = results["1 fold, no TTA"][k]
        t5 = results[f"{args.folds} folds + TTA"][k]
        ratio = t5 / (forwards * t1)
        print(f"{unit:>4}: {forwards} x single forward (1 fold, no TTA) = {forwards * t1:.3f} s; "
              f"{args.folds} folds + TTA = {t5:.3f} s; ratio {ratio:.2f} (goal <= 1.2: "
              f"{'met' if ratio <= 1.2 else 'NOT met'})")

    if args.raw_depth:
        from fpnunet.preprocessing.preprocess import preprocess_volume

        raw = rng.normal(size=(b, args.raw_depth, a)).astype(np.float32)
        pre = _time(lambda: preprocess_volume([raw], plan, config), max(1, args.cases))
        print(f"{'preprocess raw':>18}  {pre[0]:8.3f}  {pre[1]:8.3f}  "
              f"({b} x {args.raw_depth} x {a} -> depth {args.depth})")


if __name__ == "__main__":
    main()
