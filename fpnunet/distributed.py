"""Training over several processes with ``torch.distributed`` (torchrun, DDP): setup and helpers.

``torchrun --nproc_per_node N fpn_train 900 0`` (or ``fpn_train 900 0 --gpus N``) starts ``N``
copies of the command; torchrun gives each its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the
rendezvous address in the environment. :func:`setup` turns that into a process group (NCCL on
CUDA, gloo on the CPU) and this rank's device (``cuda:LOCAL_RANK``); without those variables, or
with ``WORLD_SIZE=1``, nothing is initialised and every helper here behaves as for one process
(rank 0 of 1), so the training code calls them unconditionally.

* :func:`rank`, :func:`world_size`, :func:`is_main`: who am I (``is_main``: rank 0, the only rank
  that writes checkpoints, logs, plots, the fold lock and prints the per-epoch line).
* :func:`main_first`: rank 0 runs a function (that may create files, e.g. the fold's split file)
  and the others run it after it succeeded; an :class:`FPNError` on rank 0 stops every rank with
  rank 0's message (printed by rank 0 only).
* :func:`broadcast_object`, :func:`gather_indexed`, :func:`all_reduce_mean`, :func:`shard`: small
  collectives for the loop (loss for the log, validation split over the ranks and gathered).
* :func:`wrap_model`: SyncBatchNorm (:mod:`fpnunet.sync_batchnorm`) and
  ``DistributedDataParallel``; :func:`broadcast_buffers` copies rank 0's BatchNorm statistics.
* :func:`peer_failure_guard`: a collective that fails because another rank died or timed out
  becomes one :class:`FPNError` line instead of a traceback; the process group's timeout
  (``FPN_DIST_TIMEOUT`` seconds, default 1800) bounds every wait, so a dead rank never hangs the
  job (torchrun also stops the other ranks when one exits with an error).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from fpnunet.cli_utils import resolve_device
from fpnunet.errors import FPNError
from fpnunet.lifeline import child_dies_with_us, die_with_parent

T = TypeVar("T")

ENV_TIMEOUT = "FPN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
LR_RULE = "none"
"""How the learning rate follows the world size: ``none`` (the plan's lr, tuned for one GPU's batch,
is used as is with the global batch ``world_size x batch``); see docs/distributed.md."""


class PeerFailure(FPNError):
    """Another rank of the job died, failed or timed out."""


class MirroredError(FPNError):
    """Rank 0 failed in :func:`main_first`; rank 0 prints the message, the other ranks exit quietly."""


# ----------------------------------------------------------------------------- environment
def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise FPNError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: expected a number of processes") from None


def timeout_s() -> int:
    """Seconds any collective may wait (``FPN_DIST_TIMEOUT``, default 1800)."""
    env = os.environ.get(ENV_TIMEOUT, "").strip()
    if not env:
        return DEFAULT_TIMEOUT_S
    try:
        value = int(float(env))
    except ValueError:
        raise FPNError(f"{ENV_TIMEOUT}={env!r}: expected a number of seconds") from None
    if value < 1:
        raise FPNError(f"{ENV_TIMEOUT}={env!r}: must be at least 1 second")
    return value


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def initialized() -> bool:
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized())


def rank() -> int:
    return int(_dist().get_rank()) if initialized() else 0


def world_size() -> int:
    return int(_dist().get_world_size()) if initialized() else 1


def is_main() -> bool:
    return rank() == 0


def rank_device(device: str) -> str:
    """This rank's device for ``--device`` (``auto``, ``cpu``, ``cuda``) under torchrun.

    Several ranks: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK``, ``cpu`` -> ``cpu``; an explicit
    ``cuda:N`` is refused (torchrun places the ranks). One process: the device as given.
    """
    if launched_world_size() == 1:
        return resolve_device(device)
    if device not in ("auto", "cpu", "cuda"):
        raise FPNError(f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda, "
                       f"auto or cpu (pick the GPUs with CUDA_VISIBLE_DEVICES)")
    resolved = resolve_device("cuda" if device == "cuda" else device)
    if resolved.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return resolved


def setup(device: str) -> str:
    """Initialise the process group when torchrun started several processes; returns this rank's
    device (see :func:`rank_device`). Idempotent; a no-op for one process."""
    resolved = rank_device(device)
    if launched_world_size() == 1 or initialized():
        return resolved
    import torch

    if os.environ.get("TORCHELASTIC_RUN_ID"):  # started by torchrun's agent: end with it (a kill -9 of the
        die_with_parent(os.getppid())  # agent would otherwise leave this rank running as an orphan)
    dist = _dist()
    backend = "nccl" if resolved.startswith("cuda") else "gloo"
    if resolved.startswith("cuda"):
        torch.cuda.set_device(torch.device(resolved))
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError) as exc:  # rendezvous failed: bad address, peers never came
        raise FPNError(f"could not join the distributed job ({backend}, WORLD_SIZE={launched_world_size()}, "
                       f"MASTER_ADDR={os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return resolved


def shutdown() -> None:
    """Leave the process group (if any)."""
    if initialized():
        with contextlib.suppress(Exception):
            _dist().destroy_process_group()


def backend() -> str | None:
    return str(_dist().get_backend()) if initialized() else None


# ----------------------------------------------------------------------------- collectives
def barrier() -> None:
    if world_size() > 1:
        _dist().barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (picklable; small objects only)."""
    if world_size() == 1:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def all_reduce_mean(values: Sequence[float]) -> list[float]:
    """Element-wise mean over the ranks of a few floats (float64)."""
    if world_size() == 1:
        return [float(v) for v in values]
    import torch

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if backend() == "nccl":
        t = t.cuda()
    _dist().all_reduce(t)
    return [float(v) / world_size() for v in t.cpu()]


def shard(n: int) -> list[int]:
    """The indices of ``n`` items this rank handles: ``rank, rank + W, rank + 2W, ...``."""
    return list(range(rank(), int(n), world_size()))


def gather_indexed(n: int, mine: dict[int, Any]) -> list[Any]:
    """Every rank's ``{index: value}`` of :func:`shard` joined into one list of ``n`` values, in
    index order (the order one process would have produced them)."""
    joined: dict[int, Any] = {}
    for part in all_gather_object(mine):
        joined.update(part)
    missing = [i for i in range(n) if i not in joined]
    if missing:
        raise RuntimeError(f"gather_indexed: no rank returned items {missing}")
    return [joined[i] for i in range(n)]


def run_or_launch(module: str, argv: list[str], gpus: int, device: str, work: Callable[[], object]) -> int:
    """The body of ``fpn_train`` / ``fpn_pretrain``: with ``--gpus N`` (N != 1) relaunch ``module``
    under torchrun (:func:`launch`); else print the data-roots line once (rank 0 under an outer
    torchrun) and do ``work()``."""
    if gpus != 1:
        check_launch(gpus, device)
        return launch(module, argv, gpus)
    if is_main():  # once, not per torchrun rank
        from fpnunet.cli_args import print_data_roots  # lazy: start-up time

        print_data_roots()
    work()
    return 0


def in_job(device: str, work: Callable[[], T]) -> T:
    """``work()`` inside the distributed job: joined with :func:`setup` (a no-op for one process),
    left with :func:`shutdown`; a rank stopped by another rank's error exits with status 1 (rank 0
    prints the error)."""
    setup(device)
    try:
        return work()
    except MirroredError:
        raise SystemExit(1) from None
    finally:
        shutdown()


def main_first(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0, then (if it succeeded) on the other ranks; returns its result.

    For steps that create shared files (split file, fold folder): the other ranks then only read
    them. When rank 0 raises :class:`FPNError`, every rank raises it (:class:`MirroredError` on the
    others, which exit without printing it again).
    """
    if world_size() == 1:
        return fn(*args, **kwargs)
    error: str | None = None
    result: Any = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except FPNError as exc:
            error = str(exc)
            broadcast_object(error)
            raise
        except BaseException:
            broadcast_object("rank 0 failed (see its traceback)")
            raise
    error = broadcast_object(error)
    if is_main():
        return result
    if error is not None:
        raise MirroredError(error)
    return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- the model
def wrap_model(model: Any, device: str, sync_bn: bool = True) -> Any:
    """``model`` for the training forward under several ranks: its BatchNorm layers turned into
    SyncBatchNorm (``sync_bn``; in place, the same parameters and buffers) and wrapped in
    ``DistributedDataParallel``. One process: ``model`` unchanged."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from fpnunet.sync_batchnorm import convert_sync_batchnorm  # lazy: start-up time (torch)

    if sync_bn:
        convert_sync_batchnorm(model, device)
    ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
    import inspect

    # rank 0's BatchNorm statistics are copied at every forward unless SyncBatchNorm keeps them equal
    name = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{name: not sync_bn})


def broadcast_buffers(model: Any) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if world_size() == 1:
        return
    dist = _dist()
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


# ----------------------------------------------------------------------------- failures
_PEER_MARKERS = ("connection closed by peer", "connection reset", "timed out", "timeout", "gloo", "nccl",
                 "broken pipe", "socket", "watchdog")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a collective that failed because another rank is gone."""
    dist = _dist()
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _PEER_MARKERS)


@contextlib.contextmanager
def peer_failure_guard(what: str, resume_hint: str = "") -> Iterator[None]:
    """Turn a failed collective (another rank died or timed out) into one :class:`PeerFailure` line."""
    try:
        yield
    except Exception as exc:
        if world_size() == 1 or isinstance(exc, FPNError) or not is_peer_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerFailure(f"rank {rank()} of {world_size()}: another process of the distributed job stopped or "
                          f"timed out during {what} ({first[:200]}); look for the first error in the other ranks' "
                          f"output{resume_hint}") from None


def say(message: str) -> None:
    """Print on rank 0 only."""
    if is_main():
        print(message, flush=True)


def describe() -> str:
    """``"2 processes (gloo)"`` for the header."""
    if world_size() == 1:
        return "1 process"
    return f"{world_size()} processes ({backend()})"


# ----------------------------------------------------------------------------- --gpus N
def strip_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = True
            continue
        if item.startswith(flag + "="):
            continue
        out.append(item)
    return out


def launch_command(module: str, argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command ``--gpus N`` runs: one node, ``N`` processes of ``python -m module``."""
    return [sys.executable, "-m", "fpnunet.launch_agent", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", module, *strip_flag(argv, "--gpus")]


def check_launch(nproc: int, device: str) -> None:
    """Validate ``--gpus N`` with ``--device`` before anything starts."""
    if nproc < 1:
        raise FPNError(f"--gpus must be >= 1, got {nproc}")
    if nproc == 1:
        return
    if "WORLD_SIZE" in os.environ:
        raise FPNError(f"--gpus {nproc}: this process already runs under torchrun (WORLD_SIZE="
                       f"{os.environ['WORLD_SIZE']}); leave --gpus out and let torchrun start the processes")
    if device == "cpu":
        return
    if device not in ("auto", "cuda"):
        raise FPNError(f"--gpus {nproc} --device {device}: the ranks use cuda:0..cuda:{nproc - 1}; pass --device "
                       f"cuda or auto (choose GPUs with CUDA_VISIBLE_DEVICES), or --device cpu for CPU processes")
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < nproc:
        raise FPNError(f"--gpus {nproc}: this machine has {have} CUDA device(s); use --gpus {have or 1} or "
                       f"--device cpu to run {nproc} CPU processes (gloo)")


def launch(module: str, argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m module argv`` under torchrun with ``nproc`` processes; returns its exit status."""
    import subprocess

    command = launch_command(module, argv, nproc)
    print(f"launching {nproc} processes: {' '.join(command[1:])}", flush=True)
    return subprocess.call(command, preexec_fn=child_dies_with_us)  # noqa: PLW1509  (kill -9 of us ends the agent)
