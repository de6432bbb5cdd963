"""What a run checks before it touches the fold folder (before ``--overwrite`` deletes anything).

::

    check_data(config)                 # every file of every case of the run there and whole
    check_memory(config, model)        # one training step fits the device's memory (an estimate)

Both refuse with one line (:class:`~fpnunet.errors.FPNError`): a corrupt ``CASE.json`` or a
truncated ``.npy`` found only when the loader reaches it, or a ``--batch-size`` the machine cannot
hold (killed by the operating system's out-of-memory killer, without a message), would otherwise
cost the earlier run that ``--overwrite`` deleted first.
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.run_config import RunConfig

GIB = 2**30


def check_data(config: RunConfig) -> None:
    """Every case the run reads has all its files, each ``.npy`` whole and ``CASE.json`` valid."""
    hint = f"rerun fpn_plan_and_preprocess -d {config.dataset}"
    ds = PreprocessedDataset.open(config.data_dir, hint)
    ds.check_cases(sorted({*config.train_cases, *config.val_cases, *config.unlabelled_cases}), hint)


def available_bytes(device: str) -> tuple[int, str] | None:
    """``(bytes, what)`` a run on ``device`` may use: free GPU memory, or the memory the operating
    system reports available; ``None`` when unknown."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"{device} has {free / GIB:.1f} GiB free"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    n = int(line.split()[1]) * 1024
                    return n, f"this machine has {n / GIB:.1f} GiB available"
    except (OSError, ValueError, IndexError):
        pass
    try:
        n = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(n), f"this machine has {n / GIB:.1f} GiB available"


def step_bytes(config: RunConfig, model: nn.Module, patch: tuple[int, int], depth: int) -> tuple[int, int] | None:
    """``(fixed, per sample)``: estimated peak bytes of one training step are ``fixed + per sample *
    batch`` (:mod:`fpnunet.plans.memory` at batches 1 and 2, on the ``meta`` device: nothing is
    allocated); ``None`` when the estimator cannot run the model (a trainer with its own forward)."""
    from fpnunet.plans.memory import estimate_training_memory  # lazy: start-up time

    opt = "adamw" if config.optimizer == "adamw" else "sgd"
    for channels in dict.fromkeys((config.in_channels, config.in_channels + len(config.enface_inputs))):
        try:
            one, two = (estimate_training_memory(model, (n, channels, patch[0], depth, patch[1]),
                                                 precision=config.precision, optimizer=opt,
                                                 momentum=config.momentum > 0).total_bytes for n in (1, 2))
        except Exception:  # noqa: BLE001  (any failure of the meta forward: no estimate, no refusal)
            continue
        return 2 * one - two, two - one
    return None


def check_memory(config: RunConfig, model: nn.Module, patch: tuple[int, int], depth: int,
                 plan_batch: int) -> None:
    """Refuse a batch whose estimated training step needs more memory than the device has."""
    have = available_bytes(config.device)
    line = step_bytes(config, model, patch, depth) if have is not None else None
    if have is None or line is None:
        return
    fixed, per_sample = line
    need = fixed + per_sample * config.batch_size
    if need <= have[0]:
        return
    fits = max(0, math.floor((have[0] - fixed) / max(per_sample, 1)))
    raise FPNError(f"--batch-size {config.batch_size}: one training step needs about {need / GIB:.1f} GiB "
                   f"(estimated for patch {patch[0]} x {patch[1]} x depth {depth}, {config.precision}), but "
                   f"{have[1]}; the plan's batch is {plan_batch}, at most about {fits} would fit")
