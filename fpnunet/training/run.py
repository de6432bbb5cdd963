"""Run a :class:`~fpnunet.training.run_config.RunConfig`: open the fold folder, build the trainer's
model, loss and optimizer, run the epoch loop, export.

::

    summary = run(config, argv)        # rank 0: the trainer's export (fpn_train: the final validation)

Before the fold folder is touched the trainer is built (loss, optimizer and augmentation names
are looked up), the model made, every case file checked whole and the batch's memory estimated
(:func:`check_data`, :func:`check_memory` below), and ``--pretrained``/``--encoder-weights`` read,
so bad data, a bad name or file, or a batch the machine cannot hold never costs an
``--overwrite``n run. Then the fold's lock is taken
(:class:`fpnunet.results_layout.FoldLock`: a second run on the fold is refused), temp files of
killed runs are removed, ``--overwrite`` moves the earlier run aside (deleted after the new run's first
checkpoint, put back if it fails before), ``plans.json``/``dataset.json``
are copied into the model folder, ``command.txt`` and ``run_config.json`` are written, and a
resumed run continues from ``checkpoint_latest.pth`` (a warning names the settings that changed).
"""
from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpnunet import distributed as fdist
from fpnunet.atomic import save_json
from fpnunet.checkpoint import load_checkpoint
from fpnunet.errors import FPNError
from fpnunet.networks import network_class
from fpnunet.networks.registry import model_from_checkpoint
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset, plans_file
from fpnunet.results_layout import FINAL, LATEST, PRETRAINED_FILE, FoldLock, clean_temp_files
from fpnunet.training.loop import EpochCallback, EpochLoop
from fpnunet.training.optim import apply_on_resume
from fpnunet.training.pretrained import LoadReport, load_pretrained
from fpnunet.training.run_config import RunConfig, saved_settings
from fpnunet.training.run_folder import check_start, copy_model_files, drop_aside, restore_aside, write_command
from fpnunet.training.trainer import TRAINERS, Trainer


def make_trainer(config: RunConfig, plan: Plan | None = None) -> Trainer:
    """The registered trainer of ``config`` on its plan (``plan``: instead of ``plans.json``)."""
    plan = plan or Plan.load(plans_file(config.preprocessed_dir))
    return TRAINERS.get(config.trainer)(config, plan)


def run(config: RunConfig, argv: Sequence[str], callbacks: Sequence[EpochCallback] = ()) -> dict[str, Any] | None:
    """Train (or resume, or with ``val_only`` only export) as ``config`` says; returns rank 0's export."""
    if config.val_only:
        return validate_only(config, argv) if fdist.is_main() else None
    trainer = make_trainer(config)
    trainer.check_start()
    spec, model = trainer.build_network()
    check_data(config)  # every case file whole, and the batch fits, before --overwrite deletes anything
    conf = trainer.configuration
    check_memory(config, model, (int(conf.patch_size[0]), int(conf.patch_size[1])), int(conf.depth), conf.batch_size)
    encoder_state = None
    report = None
    if not config.resume:  # a bad file fails before --overwrite deletes anything
        encoder_state = _encoder_state(config)
        if config.pretrained_path is not None:
            fdist.say(config.pretrained_message)
            report = _load_pretrained(trainer, model)
    checkpoint, lock = fdist.main_first(open_fold, config, trainer, argv)
    fold_dir = Path(config.fold_dir)
    started = False  # the new run saved its first checkpoint: the run --overwrite moved aside is deleted

    def first_checkpoint(epochs_done: int, record: dict[str, Any]) -> None:
        nonlocal started
        if not started and fdist.is_main():
            drop_aside(fold_dir)
        started = True

    callbacks = [first_checkpoint, *callbacks]
    try:
        if checkpoint is None and config.program == "fpn_train" and config.pretrained:
            if report is None:
                fdist.say(config.pretrained_message)
                if config.pretrained_path is not None:
                    report = _load_pretrained(trainer, model)
            state = encoder_state if encoder_state is not None else _encoder_state(config)
            enc = None
            if state is not None:
                from fpnunet.networks.encoder_weights import load_encoder_weights  # lazy: start-up time

                enc = load_encoder_weights(model, state, config.encoder_weights)
            if fdist.is_main():
                save_json({"choice": config.pretrained, "tag": config.tag, "path": config.pretrained_path,
                           "partial_load": config.partial_load, "report": report.to_dict() if report else None,
                           "encoder_weights": config.encoder_weights,
                           "encoder_report": enc.to_dict() if enc else None}, Path(config.fold_dir) / PRETRAINED_FILE)
        model = model.to(config.device)
        optimizer, scheduler = trainer.build_optimizer(model)
        loop = EpochLoop(trainer, model, optimizer, scheduler, config, config.fold_dir, spec, callbacks)
        if checkpoint is not None:
            loop.resume(checkpoint)
            changed = apply_on_resume(saved_settings(checkpoint), config, optimizer, scheduler)
            fdist.say(f"resumed from {Path(config.fold_dir) / LATEST} after epoch {loop.start_epoch}"
                      + (f"; applied from epoch {loop.start_epoch + 1} on: {', '.join(changed)}" if changed else ""))
        try:
            loop.run()
        except KeyboardInterrupt:
            if fdist.is_main() and (Path(config.fold_dir) / LATEST).is_file():
                again = shlex.join([config.program, *argv, *([] if "--continue" in argv else ["--continue"])])
                print(f"\ninterrupted after the last saved epoch; resume with: {again}", file=sys.stderr)
            raise
        main_rank = fdist.is_main()
        fdist.barrier()
        fdist.shutdown()  # the export (e.g. the final validation with flip TTA) runs on rank 0 alone
        return trainer.export(model, FINAL, config.epochs, loop.best_score) if main_rank else None
    except BaseException:
        if lock is not None and not started and restore_aside(fold_dir, tuple(trainer.run_dirs)):
            print(f"the new run failed before its first checkpoint; the earlier run in {fold_dir} is restored",
                  file=sys.stderr)
        raise
    finally:
        if lock is not None:
            lock.release()


def _encoder_state(config: RunConfig) -> dict | None:
    if config.encoder_weights in ("none", ""):
        return None
    from fpnunet.networks.encoder_weights import resolve_encoder_weights  # lazy: start-up time (timm, 2D encoders)

    return resolve_encoder_weights(config.encoder_weights, config.network, network_class(config.network),
                                   config.network_kwargs)[1]


def _load_pretrained(trainer: Trainer, model: nn.Module) -> LoadReport:
    c = trainer.config
    return load_pretrained(trainer.pretrained_module(model), str(c.pretrained_path),
                           network=trainer.configuration.network.name, partial=c.partial_load)


def open_fold(config: RunConfig, trainer: Trainer,
              argv: Sequence[str]) -> tuple[dict[str, Any] | None, FoldLock | None]:
    """Start or resume the run in the fold folder: ``(checkpoint to resume or None, the lock)``
    (rank 0 holds the lock; the other ranks only read what rank 0 left)."""
    fold_dir = Path(config.fold_dir)
    main_rank = fdist.is_main()
    lock = FoldLock(fold_dir, config.program).acquire() if main_rank else None
    try:
        if main_rank:
            clean_temp_files(fold_dir)
            resume = check_start(fold_dir, config.resume, config.overwrite, tuple(trainer.run_dirs))
            if not resume:
                for name in trainer.run_dirs:
                    if (fold_dir / name).is_dir():
                        shutil.rmtree(fold_dir / name)  # written by an earlier, discarded run
        else:
            resume = config.resume and (fold_dir / LATEST).is_file()
        checkpoint = load_checkpoint(fold_dir / LATEST) if resume else None
        if checkpoint is not None:
            check_world_size(checkpoint, fold_dir / LATEST)
        if main_rank:
            copy_model_files(Path(config.preprocessed_dir), Path(config.model_dir))
            write_command(fold_dir, list(argv), config.program, append=resume)
            config.save(fold_dir)
            trainer.start(resume)
            print(trainer.header())
            print_settings(config, trainer, resume)
    except BaseException:
        if lock is not None:
            restore_aside(fold_dir, tuple(trainer.run_dirs))
            lock.release()
        raise
    if checkpoint is not None:
        warn_changed(saved_settings(checkpoint), config.to_dict(), trainer.watched)
    return checkpoint, lock


def validate_only(config: RunConfig, argv: Sequence[str]) -> dict[str, Any] | None:
    """``fpn_train --val``: the trainer's export from a saved checkpoint (predict the fold's
    validation cases, write ``validation/summary.json``)."""
    fold_dir, model_dir = Path(config.fold_dir), Path(config.model_dir)
    path = fold_dir / f"checkpoint_{config.val_checkpoint}.pth"
    if not path.is_file():
        others = sorted(p.parent.name + "/" + p.name for p in model_dir.parent.glob(f"*/{fold_dir.name}/*.pth"))
        raise FPNError(f"{path}: no checkpoint to validate. Checkpoints of this dataset and fold: "
                       f"{others or 'none'} (the folder depends on --config, --label-fraction and --pretrained)")
    model, ckpt = model_from_checkpoint(path, config.device)
    plan_file = plans_file(model_dir)
    trainer = make_trainer(config, Plan.load(plan_file) if plan_file.is_file() else None)
    with FoldLock(fold_dir, config.program):
        clean_temp_files(fold_dir)
        write_command(fold_dir, list(argv), config.program, append=True)
        return trainer.export(model, path.name, int(ckpt.get("epoch", 0)), ckpt.get("best_score"))


def check_world_size(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written by another number of processes: its batches (drawn
    per rank) and BatchNorm statistics would not continue the interrupted run."""
    old = int(saved_settings(checkpoint).get("world_size", 1))
    now = fdist.world_size()
    if old != now:
        how = f"torchrun --nproc_per_node {old} ... or --gpus {old}" if old > 1 else "one process (no torchrun/--gpus)"
        raise FPNError(f"{path}: written by a run over {old} process(es), but this run has {now}; --continue "
                       f"needs the same world size ({how}), or pass --overwrite to start over")


def warn_changed(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str]) -> None:
    """Warn when ``--continue`` resumes a run whose ``keys`` settings were different."""
    changed = [k for k in keys if old.get(k) is not None and old[k] != new.get(k)]
    if changed:
        print(f"warning: --continue with settings that differ from the interrupted run: {', '.join(changed)}; "
              f"the result will not equal an uninterrupted run")


def print_settings(c: RunConfig, trainer: Trainer, resume: bool) -> None:
    """The header's settings line and where the run writes."""
    patch = tuple(trainer.configuration.patch_size)
    loss = "loss 1 - SSIM, " if c.loss == "ssim" else ""
    print(f"  {c.epochs} epochs x {c.iterations_per_epoch} iterations, batch {c.batch_size}, "
          f"patch {patch} x depth {trainer.configuration.depth}, lr {c.lr:g} "
          f"({c.optimizer}, {c.lr_schedule}, weight decay {c.weight_decay:g}), {loss}validation every {c.val_every}, "
          f"device {c.device} ({c.precision}), seed {c.seed}")
    if c.world_size > 1:
        print(f"  distributed: {fdist.describe()}, batch {c.batch_size} per process -> global batch "
              f"{c.global_batch}; lr {c.lr:g} as planned for one process's batch (lr rule: "
              f"{fdist.LR_RULE}, no scaling with the world size), "
              f"{'SyncBatchNorm' if c.sync_bn else 'BatchNorm per process (--no-sync-bn)'}")
    print(f"  {'resuming in' if resume else 'writing to'} {c.fold_dir}")


# ---- what a run checks before it touches the fold folder ----
# check_data(config): every file of every case of the run there and whole; check_memory(config,
# model, ...): one training step fits the device's memory (an estimate). Both refuse with one line:
# a corrupt CASE.json or a truncated .npy found only when the loader reaches it, or a --batch-size
# the machine cannot hold (killed by the out-of-memory killer without a message), would otherwise
# cost the earlier run that --overwrite moved aside.
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
