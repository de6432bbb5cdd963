"""Training throughput of one process vs DDP over several (samples per second, scaling efficiency).

::

    python benchmarks/distributed.py                       # CPU: 1 vs 2 gloo processes, tiny FPN
    python benchmarks/distributed.py --device cuda --procs 4   # 1 GPU vs DDP over 4 GPUs (NCCL)

Each round runs both variants, one after the other (interleaved, so a machine whose load changes
affects both alike): ``1`` process, then ``--procs`` processes forked from this script, each a
rank of a gloo (CPU) or NCCL (CUDA) group, training the same FPN through
:meth:`fpnunet.training.loop.EpochLoop.step` (DDP, SyncBatchNorm) on random batches of
``--batch`` per process. A variant's figure is ``batch x processes x steps / seconds`` after
``--warmup`` steps; the table gives the median over the rounds and the scaling efficiency
``samples/s(N) / (N x samples/s(1))``. On the CPU the cores are shared: one process gets
``--threads`` intra-op threads (default: all cores), each of ``N`` processes ``threads / N``
(``--threads-per-process T``: every process ``T``).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, threads: int, queue: multiprocessing.Queue
            ) -> None:
    import torch

    from fpnunet import distributed as fdist
    from fpnunet.networks import build_network, network_class
    from fpnunet.training.loop import EpochLoop
    from fpnunet.training.run_config import RunConfig

    try:
        torch.set_num_threads(threads)
        if world > 1:
            os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        device = fdist.setup(args.device)
        patch = tuple(args.patch)
        kw = network_class("fpn").plan_kwargs(patch, args.depth, (1.0, 1.0))
        torch.manual_seed(0)
        model = build_network("fpn", 1, 1, **kw).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)

        class Task:
            metric_columns: tuple[str, ...] = ()
            score_column = None

            def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
                return ((torch.sigmoid(output) - batch["target"]) ** 2).mean()

        loop = EpochLoop(Task(), model, opt, None,  # type: ignore[arg-type]
                         RunConfig(epochs=1, iterations_per_epoch=1, device=device, progress=False,
                                      precision="bf16" if device.startswith("cuda") else "fp32"),
                         Path("/tmp"), spec={}, plot=False)
        g = torch.Generator().manual_seed(rank)
        batch = {"data": torch.randn(args.batch, 1, patch[0], args.depth, patch[1], generator=g).to(device),
                 "target": (torch.rand(args.batch, 1, *patch, generator=g) > 0.5).float().to(device)}
        for _ in range(args.warmup):
            loop.step(batch)
        fdist.barrier()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loop.step(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        fdist.barrier()
        if rank == 0:
            queue.put(args.batch * world * args.steps / seconds)
        fdist.shutdown()
    except BaseException as exc:  # noqa: BLE001  reported by the parent
        queue.put(f"rank {rank}: {type(exc).__name__}: {exc}")


def run_variant(world: int, args: argparse.Namespace) -> float:
    ctx = multiprocessing.get_context("spawn" if args.device.startswith("cuda") else "fork")
    queue = ctx.Queue()
    threads = args.threads_per_process or max(1, args.threads // world)
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, args, threads, queue)) for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=1800)
    for p in procs:
        p.join(60)
    if isinstance(result, str):
        raise SystemExit(f"error: {result}")
    return float(result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--procs", type=int, default=2, help="processes (GPUs) of the DDP variant (default 2)")
    p.add_argument("--patch", type=int, nargs=2, default=(16, 32), help="en-face patch (B, A) (default 16 32)")
    p.add_argument("--depth", type=int, default=32, help="depth (default 32)")
    p.add_argument("--batch", type=int, default=2, help="batch per process (default 2, the planner's usual)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round (default 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU intra-op threads in all (default: all cores), split over the processes")
    p.add_argument("--threads-per-process", type=int, default=0,
                   help="give every process this many threads instead (e.g. 1: 1 x 1 thread vs N x 1 thread)")
    args = p.parse_args()
    single, multi = [], []
    for r in range(args.rounds):
        single.append(run_variant(1, args))
        multi.append(run_variant(args.procs, args))
        print(f"round {r + 1}: 1 process {single[-1]:.2f} samples/s, {args.procs} processes {multi[-1]:.2f} "
              f"samples/s", flush=True)
    s1, sn = statistics.median(single), statistics.median(multi)
    print()
    print(f"FPN patch {tuple(args.patch)} x depth {args.depth}, batch {args.batch} per process, device {args.device}"
          + ("" if args.device != "cpu" else f", {args.threads_per_process} thread(s) per process"
             if args.threads_per_process else f", {args.threads} CPU thread(s) in all"))
    print(f"| processes | samples/s (median of {args.rounds}) | speed-up | scaling efficiency |")
    print("|---|---|---|---|")
    print(f"| 1 | {s1:.2f} | 1.00 | 1.00 |")
    print(f"| {args.procs} | {sn:.2f} | {sn / s1:.2f} | {sn / (args.procs * s1):.2f} |")


if __name__ == "__main__":
    main()
