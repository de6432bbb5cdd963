"""Is the data loader the bottleneck of a training step? Seconds per iteration of an FPN SGD step
fed by the real loader (``make_train_loader``: memory-mapped crops + augmentation in workers)
versus fed by batches already in memory. The loader keeps up when the ratio is <= 1.1.

Also reported: the cost of one batch made in-process (``--workers 0`` path, no training), which
divided by the number of workers must stay below a step, and the start-up time of a loader (paid
once per epoch).

Data: ``--data-dir`` (a preprocessed ``<data_identifier>`` folder; all its cases are used) or, by
default, a small synthetic preprocessed dataset of random arrays written to a temporary folder in
the layout of docs/layout.md. The model is ``build_network("fpn", ...)`` with the planner's
topology for the patch; the step is plain SGD on ``(soft Dice + BCE) / 2`` written inline.

Usage::

    python benchmarks/train_step.py                                  # plan's patch 32 x 256, depth 128
    python benchmarks/train_step.py --patch 16 64 --depth 64 --batch 2 --iters 10 --workers 1
    python benchmarks/train_step.py --device cuda --batch 8 --iters 50
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fpnunet.atomic import save_json, save_npy
from fpnunet.networks import build_network, network_class
from fpnunet.plans.plan import Configuration
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.loader import default_num_workers, make_train_loader


def write_synthetic(folder: Path, n_cases: int, shape_ba: tuple[int, int], depth: int, seed: int = 0) -> list[str]:
    """``n_cases`` random cases ``(1, B, depth, A)`` with an elliptic lesion label each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    b, a = np.mgrid[: shape_ba[0], : shape_ba[1]]
    names = []
    for i in range(n_cases):
        name = f"synth_{i:03d}"
        vol = rng.standard_normal((1, shape_ba[0], depth, shape_ba[1]), dtype=np.float32)
        cb, ca = rng.uniform(0.2, 0.8) * shape_ba[0], rng.uniform(0.2, 0.8) * shape_ba[1]
        seg = ((((b - cb) / (0.15 * shape_ba[0])) ** 2 + ((a - ca) / (0.15 * shape_ba[1])) ** 2) <= 1).astype(np.uint8)
        store = PreprocessedDataset(folder)
        save_npy(vol, store.volume_file(name))
        save_npy(seg, store.label_file(name))
        locs = np.argwhere(seg)
        locs = locs[rng.choice(len(locs), min(1000, len(locs)), replace=False)] if len(locs) else locs
        props = {"case": name, "labelled": True, "class_locations": {"1": locs.tolist()}}
        save_json(props, store.properties_file(name))
        names.append(name)
    return names


def dice_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(soft Dice + BCE) / 2`` over valid pixels; all ``(N, 1, B, A)``."""
    fg = (target > 0).float()
    p = torch.sigmoid(logits) * mask
    dice = (2 * (p * fg).sum() + 1e-5) / (p.sum() + (fg * mask).sum() + 1e-5)
    bce = (F.binary_cross_entropy_with_logits(logits, fg, reduction="none") * mask).sum() / mask.sum().clamp_min(1)
    return (1 - dice + bce) / 2


def loader_only(data_dir: Path, cases: list[str], config: Configuration, workers: int, n: int,
                tmp: tempfile.TemporaryDirectory | None) -> int:
    """Seconds per batch made in-process and delivered by ``workers`` workers (no network)."""
    try:
        for w in sorted({0, workers}):
            with make_train_loader(data_dir, cases, config, seed=0, epoch=0, num_workers=w) as loader:
                next(loader)
                t = time.perf_counter()
                for _ in range(n):
                    next(loader)
                dt = (time.perf_counter() - t) / n
            print(f"{w} worker(s): {dt:.4f} s per batch of {config.batch_size}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patch", type=int, nargs=2, default=(32, 256), metavar=("B", "A"), help="en-face patch")
    ap.add_argument("--depth", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per block")
    ap.add_argument("--repeats", type=int, default=2, help="alternating in-memory / loader blocks")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="augmentation workers (default: FPN_N_PROC_DA or CPUs-1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", type=int, default=8, help="synthetic cases")
    ap.add_argument("--case-shape", type=int, nargs=2, default=None, metavar=("B", "A"),
                    help="synthetic en-face size (default 1.5 x patch)")
    ap.add_argument("--data-dir", type=Path, default=None, help="existing <data_identifier> folder instead")
    ap.add_argument("--loader-only", action="store_true", help="only time making batches (no network)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    workers = default_num_workers() if args.workers is None else args.workers
    patch = (int(args.patch[0]), int(args.patch[1]))
    device = torch.device(args.device)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fpn_bench_")
        data_dir = Path(tmp.name) / f"depth{args.depth}"
        shape = tuple(args.case_shape) if args.case_shape else (patch[0] * 3 // 2, patch[1] * 3 // 2)
        cases = write_synthetic(data_dir, args.cases, shape, args.depth)  # type: ignore[arg-type]
    else:
        data_dir = args.data_dir
        store = PreprocessedDataset.open(data_dir)
        cases = store.labelled
        shape = store.load_volume(cases[0], mmap=True).shape
    config = Configuration(patch_size=patch, batch_size=args.batch, depth=args.depth, data_identifier=data_dir.name)

    if args.loader_only:
        return loader_only(data_dir, cases, config, workers, max(args.iters, 5), tmp)

    kwargs = network_class("fpn").plan_kwargs(patch, args.depth)
    net = build_network("fpn", in_channels=1, num_classes=1, **kwargs).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(batch: dict[str, Any]) -> None:
        x = torch.from_numpy(batch["data"]).to(device, non_blocking=True)
        y = torch.from_numpy(batch["target"]).to(device, non_blocking=True)
        m = torch.from_numpy(batch["mask"]).to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = dice_bce(net(x), y, m)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(source: Any, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            step(next(source))
            out.append(time.perf_counter() - t)
        return out

    print(f"patch {patch} x depth {args.depth}, batch {args.batch}, {len(cases)} cases of en-face {tuple(shape)}, "
          f"{workers} worker(s), torch threads {torch.get_num_threads()}, device {device}", flush=True)

    # cost of one batch made in-process (no training): what the workers must deliver per step
    with make_train_loader(data_dir, cases, config, seed=0, epoch=99, num_workers=0) as inproc:
        next(inproc)
        t = time.perf_counter()
        for _ in range(5):
            next(inproc)
        per_batch = (time.perf_counter() - t) / 5

    t = time.perf_counter()
    loader = make_train_loader(data_dir, cases, config, seed=0, epoch=0, num_workers=workers)
    first = next(loader)
    startup = time.perf_counter() - t
    in_memory = [first] + [next(loader) for _ in range(3)]
    cycle = itertools.cycle(in_memory)
    timed(cycle, args.warmup)
    timed(loader, args.warmup)
    mem_t: list[float] = []
    load_t: list[float] = []
    blocks = []
    try:
        for _ in range(args.repeats):
            a = timed(cycle, args.iters)
            b = timed(loader, args.iters)
            mem_t += a
            load_t += b
            blocks.append((statistics.mean(a), statistics.mean(b)))
    finally:
        loader.close()
        if tmp is not None:
            tmp.cleanup()

    med_m, med_l = statistics.median(mem_t), statistics.median(load_t)
    mean_m, mean_l = statistics.mean(mem_t), statistics.mean(load_t)
    print(f"batch made in-process (load + augment): {per_batch:.4f} s  "
          f"-> per worker share {per_batch / max(1, workers):.4f} s")
    print(f"loader start-up (fork + first batch): {startup:.3f} s")
    print(f"{'':24s}{'median s/it':>12s}{'mean s/it':>12s}")
    print(f"{'in-memory batches':24s}{med_m:12.4f}{mean_m:12.4f}")
    print(f"{'real loader':24s}{med_l:12.4f}{mean_l:12.4f}")
    for i, (a, b) in enumerate(blocks):
        print(f"  block {i}: in-memory {a:.4f}  loader {b:.4f}  ratio {b / a:.3f}")
    ratio = mean_l / mean_m
    print(f"ratio loader / in-memory: mean {ratio:.3f}, median {med_l / med_m:.3f} "
          f"({'OK' if ratio <= 1.1 else 'LOADER IS A BOTTLENECK'}, target <= 1.1)")
    return 0 if ratio <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
