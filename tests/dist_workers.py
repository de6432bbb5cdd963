"""Code run inside the 2-process gloo groups of tests/test_distributed.py (forked children)."""
from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpnunet import distributed as fdist
from fpnunet.networks import build_network, network_class
from fpnunet.training.loop import EpochLoop
from fpnunet.training.run_config import RunConfig

SHAPE_BA, DEPTH = (8, 16), 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join(rank: int, world: int, port: int) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "FPN_DIST_TIMEOUT": "60"})
    torch.set_num_threads(1)
    assert fdist.setup("cpu") == "cpu"


class PlainNet(nn.Module):
    """No BatchNorm: conv over depth then a 2D conv head, output (N, 1, B, A)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(3))


def make_net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "plain":
        return PlainNet()
    kw = network_class("fpn").plan_kwargs(SHAPE_BA, DEPTH, (1.0, 1.0))
    kw["features"] = [4, 8, 16, 32][: len(kw["features"])]
    return build_network("fpn", 1, 1, **kw)


class MSETask:
    """A task whose loss is a mean over samples (so the DDP mean of rank means is the union mean)."""

    metric_columns: tuple[str, ...] = ()
    score_column = None

    def train_batches(self, epoch: int) -> Any:  # pragma: no cover - the tests call step() directly
        raise NotImplementedError

    def loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return ((output - batch["target"]) ** 2).mean()

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return {}


def batches(n_steps: int, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"data": torch.randn(n, 1, SHAPE_BA[0], DEPTH, SHAPE_BA[1], generator=g),
             "target": torch.rand(n, 1, *SHAPE_BA, generator=g)} for _ in range(n_steps)]


def train_steps(kind: str, folder: Path, per_rank: int, steps: int = 1) -> dict[str, torch.Tensor]:
    """``steps`` SGD steps through EpochLoop.step; rank r of W takes samples [r b, (r + 1) b) of each
    union batch of W b. Returns the model's state (parameters and BatchNorm buffers)."""
    # default layout: the comparison is of the reduction, to 1e-5; channels-last oneDNN sums a batch
    # of 2 and one of 4 in different orders (float32 differences above 1e-5 after a step)
    model = make_net(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loop = EpochLoop(MSETask(), model, opt, None, RunConfig(epochs=1, iterations_per_epoch=1, progress=False,
                                                                channels_last=False),
                     folder, spec={}, plot=False)
    r, w = fdist.rank(), fdist.world_size()
    for batch in batches(steps, per_rank * w):
        loop.step({k: v[r * per_rank:(r + 1) * per_rank] for k, v in batch.items()})
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ddp_worker(rank: int, port: int, out: str) -> None:
    """Rank ``rank`` of 2: the DDP steps of both networks; then rank 1 dies and rank 0 must get a
    clear PeerFailure from its next step instead of hanging."""
    try:
        join(rank, 2, port)
        result: dict[str, Any] = {}
        for kind in ("plain", "fpn"):
            result[kind] = train_steps(kind, Path(out).parent, per_rank=2)
        model = make_net("plain")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loop = EpochLoop(MSETask(), model, opt, None, RunConfig(epochs=1, iterations_per_epoch=1, progress=False,
                                                                channels_last=False),
                         Path(out).parent, spec={}, plot=False)
        if rank == 1:
            os._exit(0)  # dies without leaving the group
        try:
            with fdist.peer_failure_guard("epoch 1"):
                for _ in range(3):
                    loop.step(batches(1, 2)[0])
            result["peer"] = "no error"
        except fdist.PeerFailure as exc:
            result["peer"] = str(exc)
        torch.save(result, out)
    except BaseException:  # noqa: BLE001  the parent reads it
        Path(out + f".err{rank}").write_text(traceback.format_exc())
    os._exit(0)


def train_worker(rank: int, port: int, argv: list[str], kill_after: int | None, report: str) -> None:
    """Rank ``rank`` of 2 running ``fpn_train argv``; with ``kill_after``, rank 0 SIGKILLs itself once
    that epoch's checkpoints are on disk, and rank 1 writes the error it then gets to ``report``."""
    import signal

    from fpnunet.commands.train import parse_args, train

    def kill(epoch: int, record: dict) -> None:
        if rank == 0 and epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    code = 0
    try:
        join(rank, 2, port)
        train(parse_args(argv), argv, callbacks=(kill,))
    except fdist.PeerFailure as exc:
        Path(report).write_text(str(exc))
        code = 3
    except BaseException:  # noqa: BLE001
        Path(report).write_text(traceback.format_exc())
        code = 4
    os._exit(code)
