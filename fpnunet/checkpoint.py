"""The checkpoint format: one module that writes and reads every ``.pth`` fpnunet makes or accepts.

A checkpoint is a ``torch.save`` dict of **tensors and plain python values only** (int, float,
str, bool, None, list, tuple, dict), so it always loads with ``torch.load(weights_only=True)``:
a model folder handed over from another site is data, never code. There is no fallback to full
unpickling anywhere in fpnunet; a file that does not load that way is refused with its path.

Keys (docs/layout.md)::

    format         {"name": "fpnunet-checkpoint", "version": 2}
    network        {"name", "kwargs"}      build_network(name, in_channels, num_outputs, **kwargs)
    in_channels    int
    num_outputs    int
    configuration  the plan's configuration name
    state_dict     model weights
    epoch          number of COMPLETED epochs
    training checkpoints add: optimizer, scheduler, scaler (state dicts), rng (see
    :func:`rng_state`), log (per-epoch records), best_score, run_config (the run's whole
    RunConfig, :mod:`fpnunet.training.run_config`; checkpoints written before it carry args and
    hyperparameters instead); :func:`training_state` gathers them, :func:`restore_training_state`
    puts them back

Checkpoints written before this format (version 1) pickled numpy's RNG state, so they only load
with full unpickling; they are refused with the one-time conversion command
``fpn_convert_checkpoint PATH`` (:mod:`fpnunet.checkpoint_convert`).
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpnunet.atomic import atomic_path
from fpnunet.errors import FPNError

FORMAT_NAME = "fpnunet-checkpoint"
FORMAT_VERSION = 2
FORMAT = {"name": FORMAT_NAME, "version": FORMAT_VERSION}
SPEC_KEYS = ("network", "in_channels", "num_outputs", "state_dict")
CONVERT_COMMAND = "fpn_convert_checkpoint"


# ----------------------------------------------------------------------------- plain values
def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with numpy scalars turned into python numbers; :class:`TypeError` on anything that
    is not a tensor or a plain python value (a bug: the file would need pickle to load)."""
    if obj is None or isinstance(obj, (bool, int, str, torch.Tensor, torch.dtype, torch.Size)):
        return obj
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {to_plain(k, where): to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where}: {type(obj).__name__} cannot go into a checkpoint (tensors and plain values only)")


# ----------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every global generator the training touches, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- model spec
def model_spec(network_name: str, network_kwargs: dict, in_channels: int, num_outputs: int,
               configuration: str) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the network (see :func:`fpnunet.networks.registry.build_model`)."""
    return {
        "network": {"name": network_name, "kwargs": to_plain(dict(network_kwargs))},
        "in_channels": int(in_channels),
        "num_outputs": int(num_outputs),
        "configuration": configuration,
    }


# ----------------------------------------------------------------------------- training state
def training_state(
    spec: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    log: list[dict[str, Any]],
    run_config: dict[str, Any],
    best_score: float | None,
) -> dict[str, Any]:
    """Everything a resumed run needs, as one dict (tensors are referenced, not copied);
    ``run_config``: :meth:`fpnunet.training.run_config.RunConfig.to_dict` (checkpoints written
    before it carry ``args`` and ``hyperparameters`` instead, read by
    :func:`fpnunet.training.run_config.saved_settings`)."""
    state = {
        **spec,
        "state_dict": model.state_dict(),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "log": [dict(r) for r in log],
        "run_config": dict(run_config),
        "best_score": best_score,
    }
    return state


def restore_training_state(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> None:
    """Load weights, optimizer, scheduler, scaler and RNG states from a training checkpoint."""
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])


# ----------------------------------------------------------------------------- save
def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` (plus the format key) atomically: a temporary name beside ``path``, then
    ``os.replace``. Anything but tensors and plain values is a :class:`TypeError`."""
    plain = to_plain({**state, "format": dict(FORMAT)})
    try:
        with atomic_path(path, suffix=".pth") as tmp:
            torch.save(plain, tmp)
    except RuntimeError as exc:  # torch reports a failed write (disk full, ...) as RuntimeError
        first = (str(exc).strip().splitlines() or ["write failed"])[0]
        raise FPNError(f"{path}: cannot write the checkpoint ({first})") from None


# ----------------------------------------------------------------------------- load
def _unsafe_globals(path: Path) -> list[str] | None:
    """The python names the pickle of ``path`` would import (read without unpickling), or None."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001  not a zip checkpoint: we cannot tell, and we do not unpickle
        return None


OLD_FORMAT_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                      "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype")
"""What a version-1 fpnunet checkpoint pickled besides tensors: numpy arrays, dtypes and scalars."""


def is_old_format_global(name: str) -> bool:
    return name in OLD_FORMAT_GLOBALS or name.startswith("numpy.dtypes.")


def load_file(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; every failure is one :class:`FPNError` naming ``path``.

    A file written by fpnunet before checkpoint format 2 gets the conversion command; a file that
    would import anything else (code) is refused naming what it would import.
    """
    path = Path(path)
    if not path.is_file():
        raise FPNError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path)
        if names and all(is_old_format_global(n) for n in names):
            raise FPNError(f"{path}: written by an older fpnunet (checkpoint format 1, pickled numpy state), "
                           f"which loads only by unpickling; if you trust this file, convert it once with: "
                           f"{CONVERT_COMMAND} {path}") from None
        shown = f" (it would import {', '.join(names[:3])})" if names else ""
        raise FPNError(f"{path}: refused: not a {what} of tensors and plain data{shown}; fpnunet never unpickles "
                       f"a model file, because unpickling can run code") from None
    except Exception as exc:  # noqa: BLE001  (any text or binary file: IndexError, struct.error, ... one line)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FPNError(f"{path}: not a readable {what} ({first})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an fpnunet checkpoint (weights only); :class:`FPNError` naming ``path`` when it is not one."""
    path = Path(path)
    ckpt = load_file(path, map_location)
    if not isinstance(ckpt, dict):
        raise FPNError(f"{path}: not an fpnunet checkpoint (a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in SPEC_KEYS if k not in ckpt]
    if missing:
        raise FPNError(f"{path}: not an fpnunet checkpoint (missing {', '.join(missing)}; see docs/layout.md)")
    fmt = ckpt.get("format")  # absent in hand-made files that load weights-only: data all the same
    version = fmt.get("version", 0) if isinstance(fmt, dict) else 0
    if isinstance(version, bool) or not isinstance(version, int):
        raise FPNError(f"{path}: not an fpnunet checkpoint (format version {version!r} is not a whole number)")
    if version > FORMAT_VERSION:
        raise FPNError(f"{path}: checkpoint format {version} is newer than this fpnunet reads "
                       f"({FORMAT_VERSION}); update fpnunet")
    check_structure(ckpt, path)
    return ckpt


def check_structure(ckpt: dict[str, Any], path: Path) -> None:
    """The values a network is built from, checked before anything is built: ``network`` a name
    and keyword arguments, positive channel and output counts, a ``state_dict`` of named tensors
    each backed by as many bytes as it has elements (a stride-0 tensor of 2^40 elements on a few
    bytes would allocate terabytes when copied)."""
    net = ckpt["network"]
    if not (isinstance(net, dict) and isinstance(net.get("name"), str) and isinstance(net.get("kwargs", {}), dict)):
        raise FPNError(f"{path}: not an fpnunet checkpoint ('network' must be {{name, kwargs}}, got "
                       f"{type(net).__name__})")
    for key in ("in_channels", "num_outputs"):
        v = ckpt[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 4096:
            raise FPNError(f"{path}: not an fpnunet checkpoint ('{key}' must be a whole number in 1..4096, "
                           f"got {v!r})")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                              for k, t in state.items()):
        raise FPNError(f"{path}: not an fpnunet checkpoint ('state_dict' must map names to tensors)")
    for name, t in state.items():
        need = t.numel() * t.element_size()
        if need > t.untyped_storage().nbytes() - t.storage_offset() * t.element_size():
            raise FPNError(f"{path}: tensor {name} claims {t.numel()} elements ({need / 2**30:.1f} GiB) on "
                           f"{t.untyped_storage().nbytes()} bytes of data: not weights fpnunet writes")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of ``path``: an fpnunet checkpoint's ``state_dict`` or a plain state dict of
    tensors (``module.``/``_orig_mod.`` prefixes removed), loaded weights only."""
    path = Path(path)
    obj = load_file(path, "cpu")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FPNError(f"{path}: neither an fpnunet checkpoint nor a state dict of tensors")
    return {str(k).removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def finite_weights(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``state_dict`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in state_dict.values() if t.is_floating_point())
