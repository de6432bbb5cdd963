"""The planner's memory estimate against real CUDA peaks, and GPU training-step times.

For each network and input ``(N, 1, B, D, A)`` (the topology ``plan_kwargs`` gives for that
patch) and each precision:

* ``est GiB``: :func:`fpnunet.plans.memory.estimate_training_memory` (what the planner uses to
  pick patch and batch; computed on ``meta``, no GPU needed);
* ``peak GiB``: :func:`fpnunet.plans.memory.calibrate_cuda`, i.e. ``torch.cuda.max_memory_allocated``
  over one real SGD training step after a warm-up step (CUDA context excluded);
* ``est GiB`` is the estimate of the peak, ``margin GiB`` the planner's safety margin (workspace,
  fragmentation), a separate term; the planner fits ``est + margin`` into the budget;
* ``est/peak``: above 1 the planner is on the safe side; below 1 it under-estimates and a
  planned batch could run out of memory;
* ``ms/step``: median wall time of ``--steps`` training steps (forward under bf16 autocast for
  ``bf16``, stand-in loss, backward, SGD step), timed with CUDA events after ``--warmup`` steps.

Needs CUDA (exits with a message otherwise). Usage::

    python benchmarks/memory_planner.py                       # default grid, all networks
    python benchmarks/memory_planner.py --networks fpn --inputs 2,32,128,256 4,32,128,256
    python benchmarks/memory_planner.py --csv memory.csv
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import pandas as pd
import torch

from fpnunet.networks import available_networks, build_network, network_class
from fpnunet.plans.memory import calibrate_cuda, copy_to_device, estimate_training_memory, stand_in_loss

SPECTRALIS_SPACING = (0.12, 0.0113)
GIB = 2**30
# (N, B, D, A): the paper's patch at three batch sizes, a deeper volume, a wider plane
DEFAULT_INPUTS = ("2,32,128,256", "8,32,128,256", "2,32,256,256", "4,64,128,384")


def parse_input(text: str) -> tuple[int, int, int, int, int]:
    try:
        n, b, d, a = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,B,D,A (four integers), got {text!r}") from None
    if min(n, b, d, a) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return (n, 1, b, d, a)


def step_ms(net: torch.nn.Module, shape: tuple[int, ...], precision: str, steps: int, warmup: int) -> float:
    """Median milliseconds of one SGD training step on CUDA (CUDA events)."""
    net = copy_to_device(net, "cuda").train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(shape, device="cuda")
    times = []
    for i in range(warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = stand_in_loss(net(x))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    del net, opt, x
    torch.cuda.empty_cache()
    return statistics.median(times)


def measure(name: str, shape: tuple[int, ...], precision: str, steps: int, warmup: int) -> dict[str, Any]:
    n, c, b, d, a = shape
    kwargs = network_class(name).plan_kwargs((b, a), d, SPECTRALIS_SPACING)
    with torch.device("meta"):
        net = build_network(name, in_channels=c, num_classes=1, **kwargs)
    row: dict[str, Any] = {"network": name, "input": "x".join(map(str, shape)), "precision": precision}
    est = estimate_training_memory(net, shape, precision=precision, optimizer="sgd")
    row["est GiB"] = est.peak_bytes / GIB
    row["margin GiB"] = est.margin_bytes / GIB
    try:
        peak = calibrate_cuda(net, shape, precision, "sgd", channels_last=True)
        row["peak GiB"] = peak / GIB
        row["est/peak"] = est.peak_bytes / peak
        row["(est+margin)/peak"] = est.total_bytes / peak
        row["ms/step"] = step_ms(net, shape, precision, steps, warmup) if steps else float("nan")
    except torch.OutOfMemoryError:
        row["peak GiB"] = row["est/peak"] = row["(est+margin)/peak"] = row["ms/step"] = float("nan")
        row["note"] = "out of memory"
        torch.cuda.empty_cache()
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", default=None, help="default: all registered")
    p.add_argument("--inputs", nargs="+", type=parse_input, default=[parse_input(s) for s in DEFAULT_INPUTS],
                   metavar="N,B,D,A", help=f"inputs (default {' '.join(DEFAULT_INPUTS)})")
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--steps", type=int, default=10, help="timed steps (0: no timing)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--csv", default=None, help="also write the table here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark measures CUDA memory and needs a CUDA GPU", file=sys.stderr)
        return 1
    networks = args.networks or available_networks()
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for name in networks:
        for shape in args.inputs:
            for precision in args.precisions:
                rows.append(measure(name, shape, precision, args.steps, args.warmup))
                print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in rows[-1].items()), flush=True)
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ratio = table["est/peak"].dropna()
    if len(ratio):
        print(f"est/peak: min {ratio.min():.2f}, median {ratio.median():.2f}, max {ratio.max():.2f} "
              f"over {len(ratio)} measurements (goal: within 10 %, i.e. 0.90-1.10); the margin is a separate term")
    return 0


if __name__ == "__main__":
    sys.exit(main())
