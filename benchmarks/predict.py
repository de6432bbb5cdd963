"""Benchmark prediction: seconds per volume for one fold, one fold + TTA and five folds + TTA.

Defaults are a Spectralis volume (49 x 496 x 512 raw, depth reduced by a plan to 128) and the
paper's FPN planned for patch 32 x 256 (random weights: speed does not depend on them)::

    python benchmarks/predict.py                                   # full size (slow on a CPU)
    python benchmarks/predict.py --cases 2 --shape 16 128 --depth 64 --patch 16 64   # small

The volumes are preprocessed-shaped ``(1, B, depth, A)`` random tensors, so the figures are the
model's share (sliding window, TTA, ensemble); ``--raw-depth D`` also times the plan's
preprocessing of a raw ``(B, D, A)`` volume when ``fpnunet.preprocessing`` is present.
Variants, timed interleaved in one process: ``tiled`` (the predictor before: the training patch
grid with Gaussian blending, BatchNorm unfolded, default layout) and ``whole`` (now: the whole
plane in one window when the memory estimate fits, BatchNorm folded, channels-last). The goal
checked at the end: five folds with TTA take at most 1.1 x twenty single whole-plane forwards::

    python benchmarks/predict.py --settings 1 1tta --cases 1 --threads 2     # full size, two settings
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from fpnunet.inference.predictor import Predictor
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


VARIANTS = {
    # the predictor before: the training patch grid, BatchNorm unfolded, default layout
    "tiled": dict(window="patch", fold_batchnorm=False, channels_last=False),
    # now: whole plane (or the fewest windows that fit), BatchNorm folded, channels-last
    "whole": dict(window="auto", fold_batchnorm=True, channels_last=True),
}
SETTINGS = {"1": (1, False), "1tta": (1, True), "5tta": (5, True)}
LABELS = {"1": "1 fold, no TTA", "1tta": "1 fold + TTA", "5tta": "5 folds + TTA"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1, help="volumes timed per setting (median)")
    p.add_argument("--shape", type=int, nargs=2, default=(49, 512), metavar=("B", "A"), help="en-face plane")
    p.add_argument("--depth", type=int, default=128, help="depth after the plan's reduction")
    p.add_argument("--patch", type=int, nargs=2, default=(32, 256), metavar=("PB", "PA"), help="en-face patch")
    p.add_argument("--spacing", type=float, nargs=2, default=(0.12, 0.0113), help="en-face spacing (mm)")
    p.add_argument("--network", default="fpn")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--raw-depth", type=int, default=0, help="also time preprocessing of (B, RAW_DEPTH, A)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["tiled", "whole"],
                   help="predictor variants, timed interleaved (default: tiled whole)")
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["1", "1tta", "5tta"],
                   help="1: one fold; 1tta: one fold + flip TTA; 5tta: --folds folds + TTA")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first call (full size, slow CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kwargs = network_class(args.network).plan_kwargs(tuple(args.patch), args.depth, tuple(args.spacing))
    config = Configuration(network=NetworkSpec(args.network, kwargs), patch_size=tuple(args.patch),
                           depth=args.depth, data_identifier=f"depth{args.depth}", precision="fp32")
    plan = Plan(dataset_name="Benchmark", labels={"background": 0, "GA": 1}, depth_crop=0,
                configurations={args.network: config}, default_configuration=args.network)
    nets = []
    for fold in range(args.folds):
        torch.manual_seed(fold)
        net = build_network(args.network, 1, 1, **kwargs)
        net.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            net(torch.randn(2, 1, args.patch[0], args.depth, args.patch[1]) * 1.5 + 0.3)
        nets.append(net.eval())
    b, a = args.shape
    rng = np.random.default_rng(0)
    volumes = [rng.normal(size=(1, b, args.depth, a)).astype(np.float32) for _ in range(args.cases)]
    predictors: dict[tuple[str, str], Predictor] = {}
    for setting in args.settings:
        n_folds, tta = SETTINGS[setting]
        n_folds = args.folds if n_folds > 1 else 1
        for variant in args.variants:
            predictors[(setting, variant)] = Predictor(nets[:n_folds], plan, args.network, device=args.device,
                                                       tta=tta, precision="fp32", **VARIANTS[variant])
    first = next(iter(predictors.values()))
    sync = torch.cuda.synchronize if first.device.type == "cuda" else (lambda: None)
    print(f"network {args.network} {kwargs}\nvolume (C, B, D, A) = (1, {b}, {args.depth}, {a}), "
          f"patch {tuple(args.patch)}, device {first.device}, fp32, torch threads {torch.get_num_threads()}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    for variant in args.variants:
        pred = predictors[(args.settings[-1], variant)]
        print(f"{variant}: {pred.window_plan((b, a)).describe()}")

    # interleaved: every (setting, variant) once per round, so load changes hit all alike
    times: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in predictors}
    rounds = args.cases + (0 if args.no_warmup else 1)
    for r in range(rounds):
        for key, pred in predictors.items():
            vol = volumes[r % len(volumes)]
            t0, c0 = time.perf_counter(), time.process_time()
            pred.predict_preprocessed(vol)
            sync()
            if r > 0 or args.no_warmup:
                times[key].append((time.perf_counter() - t0, time.process_time() - c0))
            print(f"  round {r} {LABELS[key[0]]:>16} {key[1]:>6}: {time.perf_counter() - t0:8.2f} s wall",
                  flush=True)

    def med(key: tuple[str, str], k: int) -> float:
        return statistics.median(t[k] for t in times[key])

    print(f"\n| setting | {' | '.join(f'{v} wall s | {v} CPU s' for v in args.variants)} |"
          + (f" {args.variants[-1]} / {args.variants[0]} (CPU) |" if len(args.variants) > 1 else ""))
    print("|---" * (1 + 2 * len(args.variants) + (len(args.variants) > 1)) + "|")
    for setting in args.settings:
        cells = [f"{med((setting, v), 0):.2f} | {med((setting, v), 1):.2f}" for v in args.variants]
        ratio = (f" {med((setting, args.variants[-1]), 1) / med((setting, args.variants[0]), 1):.2f} |"
                 if len(args.variants) > 1 else "")
        print(f"| {LABELS[setting]} | {' | '.join(cells)} |{ratio}")

    # single whole-plane forwards: the floor of an ensemble (20 = 5 folds x 4 flips)
    if "whole" in args.variants and "1" in args.settings:
        pred = predictors[("1", "whole")]
        plan_w = pred.window_plan((b, a))
        x = torch.randn(1, 1, plan_w.window[0], args.depth, plan_w.window[1], device=pred.device)
        from fpnunet.networks.layout import channels_last_input

        x = channels_last_input(x)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            pred.networks[0](x)
        sync()
        fwd = (time.perf_counter() - t0, time.process_time() - c0)
        print(f"single whole-plane forward {plan_w.window}: {fwd[0]:.2f} s wall, {fwd[1]:.2f} s CPU; "
              f"x {4 * args.folds} = {4 * args.folds * fwd[0]:.1f} s wall, {4 * args.folds * fwd[1]:.1f} s CPU")
        if ("5tta", "whole") in times:
            for k, unit in ((0, "wall"), (1, "CPU")):
                ratio = med(("5tta", "whole"), k) / (4 * args.folds * fwd[k])
                print(f"{unit}: {args.folds} folds + TTA / {4 * args.folds} single forwards = {ratio:.2f} "
                      f"(goal <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})")

    if args.raw_depth:
        from fpnunet.preprocessing.preprocess import preprocess_volume

        raw = rng.normal(size=(b, args.raw_depth, a)).astype(np.float32)
        pre = _time(lambda: preprocess_volume([raw], plan, config), max(1, args.cases))
        print(f"{'preprocess raw':>18}  {pre[0]:8.3f}  {pre[1]:8.3f}  "
              f"({b} x {args.raw_depth} x {a} -> depth {args.depth})")


if __name__ == "__main__":
    main()
