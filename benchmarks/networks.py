"""Benchmark the registered networks: parameters, FLOPs, CPU training-step time, peak RSS.

For each network at an input ``(N, 1, B, D, A)`` (default the paper's patch, ``N=2``,
``32 x 128 x 256``) with the topology ``plan_kwargs`` gives for that patch:

* parameters; GFLOP of one forward and of forward + backward (parameter gradients, as in the
  paper), counted by :class:`torch.utils.flop_counter.FlopCounterMode` on the ``meta`` device;
* the training-memory estimate of :mod:`fpnunet.plans.memory` when it is importable;
* unless ``--no-timing``: CPU seconds per SGD training step (median of ``--steps`` after
  ``--warmup`` steps), minor page faults per step and the peak RSS of the process, each
  configuration in its own child process (so runs do not pollute each other's RSS), once with
  the default glibc malloc settings and once with ``MALLOC_MMAP_THRESHOLD_`` /
  ``MALLOC_TRIM_THRESHOLD_`` raised (docs/networks.md).

Usage::

    python benchmarks/networks.py                          # all networks, table
    python benchmarks/networks.py --networks fpn ipn --steps 5 --threads 2
    python benchmarks/networks.py --no-timing --json       # one JSON object per network
    python benchmarks/networks.py --input 16 64 128 --batch 1
    python benchmarks/networks.py --networks fpn --layout contiguous channels_last --precision fp32 bf16 \
        --steps 3 --warmup 1 --threads 2           # the four variants, interleaved in one process
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fpnunet.networks import available_networks, build_network, network_class

SPECTRALIS_SPACING = (0.12, 0.0113)
DEFAULT_MALLOC_THRESHOLD = 2**30  # 1 GiB: glibc keeps freed activations instead of unmapping them
GIB = 2**30


def network_kwargs(name: str, batch_input: tuple[int, ...], spacing: tuple[float, float]) -> dict[str, Any]:
    """The planner's topology for the input's en-face patch ``(B, A)`` and depth ``D``."""
    _, _, b, d, a = batch_input
    return network_class(name).plan_kwargs((b, a), d, spacing)


def count_static(name: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters, forward and forward+backward FLOPs (on ``meta``), memory estimate."""
    with torch.device("meta"):
        net = build_network(name, in_channels=shape[1], num_classes=1, **kwargs)
    params = sum(p.numel() for p in net.parameters())
    x = torch.empty(shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        net(x)
    fwd = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    fwd_bwd = counter.get_total_flops()
    row: dict[str, Any] = {
        "network": name,
        "kwargs": kwargs,
        "input": list(shape),
        "params": params,
        "gflop_fwd": fwd / 1e9,
        "gflop_fwd_bwd": fwd_bwd / 1e9,
        "gflop_fwd_per_sample": fwd / 1e9 / shape[0],
    }
    try:
        from fpnunet.plans.memory import estimate_training_memory
    except ImportError:
        return row
    try:
        est = estimate_training_memory(net, shape, precision="fp32", optimizer="sgd")
    except Exception as exc:  # report, do not abort the benchmark
        row["estimate_error"] = f"{type(exc).__name__}: {exc}"
        return row
    row["estimate_total_gib"] = est.total_bytes / GIB
    row["estimate_activation_gib"] = est.activation_bytes / GIB
    return row


# ------------------------------------------------------------------------------ child process
def child_main(args: argparse.Namespace) -> None:
    """Time ``--steps`` SGD steps after ``--warmup``; print one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.batch, 1, *args.input)
    kwargs = json.loads(args.child_kwargs)
    torch.manual_seed(0)
    net = build_network(args.child, in_channels=1, num_classes=1, **kwargs).train()
    # the paper's optimiser (lr lowered from 0.1 so random data cannot blow the weights up)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(shape)
    target = (torch.rand(shape[0], 1, shape[2], shape[4]) > 0.5).float()
    times: list[float] = []
    faults: list[int] = []
    loss = torch.zeros(())
    for i in range(args.warmup + args.steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), target)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "step_s_median": statistics.median(times),
                "step_s_min": min(times),
                "step_s_all": times,
                "minor_faults_per_step": statistics.median(faults),
                "peak_rss_gib": usage.ru_maxrss * 1024 / GIB,  # ru_maxrss is KiB on Linux
                "threads": torch.get_num_threads(),
                "final_loss": float(loss),
            }
        )
    )


def run_child(args: argparse.Namespace, name: str, kwargs: dict[str, Any], tuned: bool) -> dict[str, Any]:
    env = dict(os.environ)
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(key, None)
    if tuned:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_threshold)
        env["MALLOC_TRIM_THRESHOLD_"] = str(args.malloc_threshold)
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", name, "--child-kwargs", json.dumps(kwargs),
        "--input", *map(str, args.input), "--batch", str(args.batch),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads or 0),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"child exited {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ output
def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], timing: bool) -> None:
    header = ["network", "params", "GFLOP fwd", "GFLOP f+b", "est GiB", "est act GiB"]
    if timing:
        header += ["s/step", "s/step tuned", "faults/step", "faults tuned", "RSS GiB", "RSS tuned"]
    lines = [header]
    for r in rows:
        line = [
            r["network"],
            f"{r['params']:,}",
            f"{r['gflop_fwd']:.1f}",
            f"{r['gflop_fwd_bwd']:.1f}",
            _fmt(r.get("estimate_total_gib"), ".2f"),
            _fmt(r.get("estimate_activation_gib"), ".2f"),
        ]
        if timing:
            d, t = r.get("default_malloc", {}), r.get("tuned_malloc", {})
            line += [
                _fmt(d.get("step_s_median"), ".2f"),
                _fmt(t.get("step_s_median"), ".2f"),
                _fmt(d.get("minor_faults_per_step"), ".0f"),
                _fmt(t.get("minor_faults_per_step"), ".0f"),
                _fmt(d.get("peak_rss_gib"), ".2f"),
                _fmt(t.get("peak_rss_gib"), ".2f"),
            ]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(out))
    for r in rows:
        for key in ("default_malloc", "tuned_malloc"):
            if "error" in r.get(key, {}):
                print(f"{r['network']} ({key}): {r[key]['error']}")
        if "estimate_error" in r:
            print(f"{r['network']} (memory estimate): {r['estimate_error']}")


# ------------------------------------------------------------------------------ layout x precision
def compare_variants(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    """Train-step and inference times of every ``--layout`` x ``--precision`` variant, interleaved
    in this process (each step runs every variant once, so a change in load hits all alike).

    Inference: a no-grad forward in eval mode (``fwd``) and the same with BatchNorm folded into
    the convolutions under ``torch.inference_mode`` (``fwd folded``, what the predictor runs).
    """
    import copy

    from fpnunet.inference.fast import prepare_for_inference
    from fpnunet.networks.layout import channels_last_input, to_channels_last

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (args.batch, 1, *args.input)
    variants = [(lay, prec) for lay in args.layout for prec in args.precision]
    rows = []
    for name in names:
        kwargs = network_kwargs(name, shape, tuple(args.spacing))
        torch.manual_seed(0)
        base = build_network(name, in_channels=1, num_classes=1, **kwargs).train()
        x0 = torch.randn(shape)
        target = (torch.rand(shape[0], 1, shape[2], shape[4]) > 0.5).float()
        nets, opts, xs, infer, infer_folded = {}, {}, {}, {}, {}
        for lay, prec in variants:
            cl = lay == "channels_last"
            net = copy.deepcopy(base)
            if cl:
                to_channels_last(net)
            nets[(lay, prec)] = net
            opts[(lay, prec)] = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            xs[(lay, prec)] = channels_last_input(x0) if cl else x0
            ev = copy.deepcopy(base).eval()
            infer[(lay, prec)] = to_channels_last(ev) if cl else ev
            example = xs[(lay, prec)][:1]
            infer_folded[(lay, prec)] = prepare_for_inference(copy.deepcopy(base).eval(), example, channels_last=cl)
        train_t: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        fwd_t: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        fold_t: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for i in range(args.warmup + args.steps):
            for v in variants:
                bf16 = v[1] == "bf16"
                net, opt, x = nets[v], opts[v], xs[v]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = net(x)
                F.binary_cross_entropy_with_logits(out.float(), target).backward()
                opt.step()
                t1 = time.perf_counter()
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    infer[v](x)
                t2 = time.perf_counter()
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    infer_folded[v](x)
                t3 = time.perf_counter()
                if i >= args.warmup:
                    train_t[v].append(t1 - t0)
                    fwd_t[v].append(t2 - t1)
                    fold_t[v].append(t3 - t2)
            print(f"{name}: round {i + 1}/{args.warmup + args.steps}", file=sys.stderr, flush=True)
        ref = variants[0]
        for v in variants:
            rows.append({
                "network": name, "layout": v[0], "precision": v[1],
                "train_s": statistics.median(train_t[v]), "fwd_s": statistics.median(fwd_t[v]),
                "fwd_folded_s": statistics.median(fold_t[v]),
                "train_ratio": statistics.median(train_t[v]) / statistics.median(train_t[ref]),
                "fwd_ratio": statistics.median(fwd_t[v]) / statistics.median(fwd_t[ref]),
                "fwd_folded_ratio": statistics.median(fold_t[v]) / statistics.median(fwd_t[ref]),
                "folded_norms": len(infer_folded[v].fold_report.folded),
            })
    return rows


def print_variants(rows: list[dict[str, Any]], shape: tuple[int, ...]) -> None:
    print(f"input (N, C, B, D, A) = {shape}; CPU: {_cpu_name()}; torch threads {torch.get_num_threads()}; "
          "ratios against the first variant's train step / no-grad forward, medians, interleaved")
    print("| network | layout | precision | train s/step | x | fwd s | x | fwd folded s | x | BN folded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['layout']} | {r['precision']} | {r['train_s']:.3f} | {r['train_ratio']:.2f} | "
              f"{r['fwd_s']:.3f} | {r['fwd_ratio']:.2f} | {r['fwd_folded_s']:.3f} | {r['fwd_folded_ratio']:.2f} | "
              f"{r['folded_norms']} |")


def _cpu_name() -> str:
    from fpnunet.precision import cpu_bf16_native, cpu_model

    native = cpu_bf16_native()
    return f"{cpu_model()} ({'native bf16: ' + ', '.join(native) if native else 'no native bf16'})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--networks", nargs="+", default=None, help="networks to run (default: all registered)")
    p.add_argument("--input", nargs=3, type=int, default=[32, 128, 256], metavar=("B", "D", "A"),
                   help="patch B-scans x depth x A-scans (default: the paper's 32 128 256)")  # fmt: skip
    p.add_argument("--batch", type=int, default=2, help="batch size N (default 2)")
    p.add_argument("--spacing", nargs=2, type=float, default=list(SPECTRALIS_SPACING), metavar=("SB", "SA"),
                   help="en-face spacing passed to plan_kwargs (default Spectralis 0.12 0.0113 mm)")  # fmt: skip
    p.add_argument("--steps", type=int, default=5, help="timed training steps (median reported; default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the timing processes (0: torch default)")
    p.add_argument("--malloc-threshold", type=int, default=DEFAULT_MALLOC_THRESHOLD,
                   help="MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ of the tuned run (default 1 GiB)")  # fmt: skip
    p.add_argument("--no-timing", action="store_true", help="only parameters, FLOPs and the memory estimate")
    p.add_argument("--json", action="store_true", help="print one JSON object per network instead of a table")
    p.add_argument("--layout", nargs="+", choices=("contiguous", "channels_last"), default=None,
                   help="compare these layouts (with --precision), interleaved in this process: train step, "
                        "no-grad forward and folded-BatchNorm inference forward per network")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="precisions to compare (with --layout; default fp32)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-kwargs", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--steps and --batch must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    names = args.networks or available_networks()
    unknown = sorted(set(names) - set(available_networks()))
    if unknown:
        sys.exit(f"unknown networks {unknown}; registered: {available_networks()}")
    shape = (args.batch, 1, *args.input)
    if args.layout or args.precision:
        args.layout = args.layout or ["contiguous"]
        args.precision = args.precision or ["fp32"]
        rows = compare_variants(args, names)
        if args.json:
            for r in rows:
                print(json.dumps(r))
        else:
            print_variants(rows, shape)
        return
    rows = []
    for name in names:
        kwargs = network_kwargs(name, shape, tuple(args.spacing))
        row = count_static(name, kwargs, shape)
        if not args.no_timing:
            row["default_malloc"] = run_child(args, name, kwargs, tuned=False)
            row["tuned_malloc"] = run_child(args, name, kwargs, tuned=True)
            row["malloc_threshold"] = args.malloc_threshold
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"done {name}", file=sys.stderr, flush=True)
    if not args.json:
        print(f"input (N, C, B, D, A) = {shape}; FLOPs for the whole batch (FlopCounterMode)")
        print_table(rows, timing=not args.no_timing)


if __name__ == "__main__":
    main()
