"""The generic epoch loop, shared by segmentation training and self-supervised pretraining.

The loop knows nothing about labels or targets: a :class:`~.trainer.Trainer` supplies the
batches of an epoch, the loss of a forward pass and the validation. Segmentation
(:mod:`.supervised`, :mod:`.cmc.trainer`) and en-face reconstruction pretraining
(:mod:`.reconstruction`) differ only in their trainer. The optimizer and schedule are the
trainer's (:mod:`.optim`); every setting comes from the run's :class:`~.run_config.RunConfig`.

Per epoch ``e`` (0-based; the log and checkpoints count completed epochs, ``e + 1``):

1. ``trainer.train_batches(e)``: a fresh, deterministic loader for ``(seed, e)``; the loop takes
   ``iterations_per_epoch`` batches from it (a tqdm bar shows the running loss and it/s) and
   closes it. Each numpy array of a batch becomes a tensor on the device; ``batch["data"]``
   ``(N, C, B, D, A)`` goes through the model; ``trainer.loss(output, batch)`` is minimised (SGD
   step, gradient-norm clipping). The model and the batches are in ``channels_last_3d`` on every
   device (:mod:`fpnunet.networks.layout`; CPU and GPU convolutions are faster there); on CUDA
   with ``cudnn.benchmark``, and under bf16 autocast when ``precision`` is ``bf16``.
2. the scheduler steps once (per-epoch schedules, as nnU-Net).
3. every ``val_every`` epochs and at the last: the BatchNorm running statistics are recomputed
   over ``bn_recalibration`` batches of ``trainer.train_batches(e)`` (:func:`recalibrate_batchnorm`,
   below; networks with BatchNorm only), then ``trainer.validate(model, e)`` returns the trainer's metric columns
   (e.g. ``{"val_loss", "val_dice"}`` from whole-volume prediction).
4. the record is logged (``training_log.csv``, ``progress.png``), ``checkpoint_latest.pth`` is
   written atomically with the model, optimizer, scheduler, scaler and RNG states and the log;
   ``checkpoint_best.pth`` when ``trainer.score_column`` improved; ``checkpoint_final.pth`` after the
   last epoch. Then the ``callbacks`` run (``callback(epoch_done, record)``).

A run resumed from ``checkpoint_latest.pth`` (:meth:`EpochLoop.resume`) continues at the next
epoch with the same RNG states, and the loaders are deterministic per epoch, so it ends with
exactly the weights of an uninterrupted run.

Under torchrun (several ranks, :mod:`fpnunet.distributed`) the forward runs through
``DistributedDataParallel`` (BatchNorm synchronised unless ``sync_bn`` is off), each rank's
loader draws its own batches of ``(seed, epoch, rank)``, the logged loss is the mean over the
ranks, a step is skipped on every rank when any rank's loss is not finite, rank 0 alone writes
the log, plot and checkpoints (its BatchNorm statistics are broadcast first), and validation is
split over the ranks by trainers that can (``distributed_validation``), else run on rank 0 and
broadcast.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fpnunet import distributed as fdist
from fpnunet.checkpoint import restore_training_state, save_checkpoint, training_state
from fpnunet.errors import FPNError
from fpnunet.networks.layout import channels_last_input, to_channels_last
from fpnunet.results_layout import BEST, FINAL, LATEST
from fpnunet.training.logger import RunClock, TrainingLogger
from fpnunet.training.run_config import RunConfig

EpochCallback = Callable[[int, dict[str, Any]], None]
"""``callback(epochs_done, record)``, called after the epoch's checkpoints are on disk."""

METRIC_LABELS = {"val_dice": "val Dice (no TTA)"}
"""How the epoch line names the per-epoch validation columns: whole volumes, no flip TTA (the
final validation after training uses flip TTA and says so)."""

# ----------------------------------------------------------------------------- device helpers
def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    """numpy arrays -> tensors on ``device``; other values (case keys) unchanged."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and key == "data" and value.dim() == 5:
                value = channels_last_input(value)
        out[key] = value
    return out


# ----------------------------------------------------------------------------- the loop
class EpochLoop:
    """Runs epochs of a trainer and writes the log and checkpoints to ``folder``.

    Args:
        trainer: a :class:`~fpnunet.training.trainer.Trainer` (or any object with its loop hooks:
            ``metric_columns``, ``score_column``, ``train_batches``, ``loss``, ``validate``).
        model: the network, already on ``config.device``.
        optimizer, scheduler: built on ``model``'s parameters (``trainer.build_optimizer``).
        config: the run's :class:`~fpnunet.training.run_config.RunConfig` (epochs, iterations,
            validation, precision, clipping, progress, ...), saved whole in every checkpoint.
        folder: the fold folder (checkpoints, ``training_log.csv``, ``progress.png``).
        spec: :func:`fpnunet.checkpoint.model_spec` of the model (stored in checkpoints).
        callbacks: ``callback(epochs_done, record)`` after each epoch's checkpoints.

    A non-finite loss, or non-finite weights at the end of an epoch, stop the run with an
    :class:`FPNError`; the checkpoints on disk are then those of the last good epoch.
    """

    def __init__(
        self,
        trainer: Any,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        config: RunConfig,
        folder: str | Path,
        spec: dict[str, Any],
        callbacks: Sequence[EpochCallback] = (),
        plot: bool = True,
    ) -> None:
        self.trainer = trainer
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler: Any = None  # bf16 needs no GradScaler; the checkpoint keeps the slot
        self.config = config
        self.folder = Path(folder)
        self.spec = spec
        self.callbacks = list(callbacks)
        self.device = torch.device(config.device)
        self.cuda = self.device.type == "cuda"
        self.channels_last = config.channels_last
        self.start_epoch = 0
        self.best_score: float | None = None
        self.logger = TrainingLogger(self.folder, trainer.metric_columns, plot=plot,
                                     trainer=str(getattr(trainer, "name", "") or type(trainer).__name__.lower()))
        self.clock = RunClock(config.epochs, config.iterations_per_epoch, config.validates_at,
                              heartbeat_s=0.0 if config.progress else config.heartbeat)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        if self.channels_last:
            to_channels_last(self.model)
        self.main = fdist.is_main()
        self.forward_model = fdist.wrap_model(self.model, config.device, config.sync_bn)
        """What the training forward goes through: ``model`` itself, or its DDP wrapper (compiled with
        ``config.compile``)."""
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)

    # ------------------------------------------------------------------ resume
    def resume(self, ckpt: dict[str, Any]) -> None:
        """Continue from a training checkpoint: weights, optimizer, scheduler, RNG, log, best score."""
        restore_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler)
        if self.channels_last:
            to_channels_last(self.model)
        self.start_epoch = int(ckpt["epoch"])
        self.logger.records = [dict(r) for r in ckpt.get("log", [])]
        self.best_score = ckpt.get("best_score")

    # ------------------------------------------------------------------ run
    def run(self) -> list[dict[str, Any]]:
        """Train from :attr:`start_epoch` to ``config.epochs``; returns the log records."""
        s = self.config
        if self.start_epoch >= s.epochs:
            self._say(f"nothing to train: {self.start_epoch} of {s.epochs} epochs are done")
            if self.main and not (self.folder / FINAL).is_file():
                save_checkpoint(self._state(self.start_epoch), self.folder / FINAL)
            return self.logger.records
        hint = f"; resume from the last saved epoch with --continue ({self.folder / LATEST})"
        for epoch in range(self.start_epoch, s.epochs):
            with fdist.peer_failure_guard(f"epoch {epoch + 1}", hint):
                self._run_epoch(epoch)
        return self.logger.records

    def _run_epoch(self, epoch: int) -> None:
        s = self.config
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self.train_epoch(epoch)
        if self.scheduler is not None:
            self.scheduler.step()
        metrics: dict[str, float] = {}
        if s.validates_at(epoch):
            t_val = time.perf_counter()
            self.recalibrate(epoch)
            fdist.broadcast_buffers(self.model)  # --no-sync-bn: rank 0's statistics everywhere
            metrics = self.validate(epoch)
            self.clock.add_validation(time.perf_counter() - t_val)
        record = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": lr,
                  "epoch_time_s": time.perf_counter() - t0}
        self._check_finite(epoch)
        improved = self._improved(record)
        if self.main:
            self.logger.log(record)
            state = self._state(epoch + 1)
            save_checkpoint(state, self.folder / LATEST)
            if improved:
                save_checkpoint(state, self.folder / BEST)
            if epoch + 1 == s.epochs:
                save_checkpoint(state, self.folder / FINAL)
        else:
            self.logger.records.append(record)
        self._summary(record, improved, self.clock.eta_text(epoch, s.iterations_per_epoch, validated=True))
        for callback in self.callbacks:
            callback(epoch + 1, record)

    def validate(self, epoch: int) -> dict[str, float]:
        """The trainer's validation; with several ranks split over them when the trainer can
        (``distributed_validation``), else on rank 0 and broadcast."""
        if fdist.world_size() == 1 or getattr(self.trainer, "distributed_validation", False):
            return self.trainer.validate(self.model, epoch)
        metrics = self.trainer.validate(self.model, epoch) if self.main else {}
        self.model.train()
        return fdist.broadcast_object(metrics)

    def train_epoch(self, epoch: int) -> float:
        """One epoch of ``iterations_per_epoch`` steps; returns the mean training loss."""
        s = self.config
        self.model.train()
        source = self.trainer.train_batches(epoch)
        losses: list[float] = []
        try:
            batches: Iterable[dict[str, Any]] = iter(source)
            bar = tqdm(range(s.iterations_per_epoch), desc=f"epoch {epoch + 1}/{s.epochs}", unit="it",
                       disable=not (s.progress and self.main), leave=False, dynamic_ncols=True)
            t_last = time.perf_counter()
            for i in bar:
                try:
                    batch = next(batches)  # type: ignore[call-overload]
                except StopIteration:
                    raise FPNError(f"the training loader ended after {len(losses)} batches; "
                                   f"{s.iterations_per_epoch} were asked for per epoch") from None
                loss = self.step(batch_to_device(batch, self.device, self.channels_last))
                if not math.isfinite(loss):
                    self._diverged(f"the loss is {loss} at step {len(losses) + 1} of epoch {epoch + 1}")
                losses.append(loss)
                now = time.perf_counter()
                self.clock.add_iterations(now - t_last)  # loader waits included
                t_last = now
                bar.set_postfix_str(f"loss={np.mean(losses[-50:]):.4f} {self.clock.eta_text(epoch, i + 1)}",
                                    refresh=False)
                if self.clock.heartbeat_due():
                    self._heartbeat(epoch, i + 1, losses)
            bar.close()
        finally:
            source.close()
        return float(np.mean(losses)) if losses else math.nan

    def recalibrate(self, epoch: int) -> int:
        """Recompute BatchNorm statistics over ``bn_recalibration`` batches of epoch ``epoch``'s loader."""
        if self.config.bn_recalibration < 1 or not batchnorm_layers(self.model):
            return 0
        source = self.trainer.train_batches(epoch)
        try:
            return recalibrate_batchnorm(self.model, source, self.config.bn_recalibration,
                                         prepare=lambda b: batch_to_device(b, self.device, self.channels_last),
                                         precision=self.config.precision)
        finally:
            source.close()

    def step(self, batch: dict[str, Any]) -> float:
        """Forward, loss, backward, clip, optimizer step; returns the loss (non-finite: no step taken)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            output = self.forward_model(batch["data"])
        loss = self.trainer.loss(output, batch)
        value = float(loss.detach())
        if fdist.world_size() > 1:  # the mean over the ranks: NaN on every rank when one is not finite
            value = fdist.all_reduce_mean([value])[0]
        if not math.isfinite(value):
            return value
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return value

    # ------------------------------------------------------------------ helpers
    def _check_finite(self, epoch: int) -> None:
        bad = [n for n, t in self.model.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            self._diverged(f"{len(bad)} weight tensor(s) are not finite after epoch {epoch + 1} (e.g. {bad[0]})")

    def _diverged(self, what: str) -> None:
        done = self.logger.records[-1]["epoch"] if self.logger.records else 0
        kept = (f"{self.folder / LATEST} (epoch {done}) is the last good checkpoint" if (self.folder / LATEST).is_file()
                else "no checkpoint was written")
        lr = self.optimizer.param_groups[0]["lr"]
        raise FPNError(f"training diverged: {what} (lr {lr:g}); stopped, {kept}. Lower --lr (or check the data)")

    def _improved(self, record: dict[str, Any]) -> bool:
        col = self.trainer.score_column
        score = record.get(col) if col else None
        if score is None or not math.isfinite(float(score)):
            return False
        if self.best_score is None or float(score) > self.best_score:
            self.best_score = float(score)
            return True
        return False

    def _state(self, epochs_done: int) -> dict[str, Any]:
        return training_state(self.spec, self.model, self.optimizer, self.scheduler, self.scaler, epochs_done,
                              self.logger.records, self.config.to_dict(), self.best_score)

    def _summary(self, record: dict[str, Any], improved: bool, eta: str = "") -> None:
        parts = [f"epoch {record['epoch']}/{self.config.epochs}", f"train_loss {record['train_loss']:.4f}"]
        for col in self.trainer.metric_columns:
            value = record.get(col)
            if value is not None and math.isfinite(float(value)):
                parts.append(f"{METRIC_LABELS.get(col, col)} {float(value):.4f}"
                             + (" (best)" if improved and col == self.trainer.score_column else ""))
        parts += [f"lr {record['lr']:.2e}", f"{record['epoch_time_s']:.1f} s"]
        if eta and record["epoch"] < self.config.epochs:
            parts.append(eta)
        self._say("  ".join(parts))

    def _heartbeat(self, epoch: int, done: int, losses: list[float]) -> None:
        """The ``--no-progress`` line: where the run is, its recent loss and the run's ETA."""
        s = self.config
        loss = f"loss {np.mean(losses[-50:]):.4f}, " if losses else ""
        per_it = self.clock.seconds_per_iteration() or 0.0
        self._say(f"epoch {epoch + 1}/{s.epochs} iteration {done}/{s.iterations_per_epoch}: {loss}"
                  f"{per_it:.2f} s/it, {self.clock.eta_text(epoch, done)}")

    def _say(self, message: str) -> None:
        if self.main:
            tqdm.write(message)
        self.clock.printed()


# ----------------------------------------------------------------------------- precise BatchNorm
# BatchNorm uses batch statistics in training and running averages (momentum 0.1) in evaluation.
# With small batches and a short schedule at a high learning rate the average lags the weights: in
# the label-efficiency sweep (96 SGD steps at lr 0.1, batch 2) one FPN fold scored 0.37 validation
# Dice with the running averages and 0.75 after recomputing them over 25 training batches with the
# final weights (docs/training.md). recalibrate_batchnorm resets every BatchNorm layer's running
# mean and variance, recomputes them as the plain average over num_batches training batches
# (forward only, weights untouched) and restores the layers' momentum.
BatchNormLayer = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[BatchNormLayer]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, BatchNormLayer) and m.track_running_stats]


def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    num_batches: int,
    prepare: Any = None,
    precision: str = "fp32",
) -> int:
    """Recompute the running statistics of ``model``'s BatchNorm layers over ``num_batches`` batches.

    Args:
        model: the network; left in the mode it was in.
        batches: dicts with ``data`` ``(N, C, B, D, A)`` (numpy or tensor), e.g. training batches.
        num_batches: how many to average over (fewer if ``batches`` ends first).
        prepare: ``batch -> batch`` putting the tensors on the model's device (default: as is).
        precision: ``bf16`` runs the forwards under autocast, as training does.

    Returns the number of batches used (0: no BatchNorm layer or no batch; the statistics unchanged).
    """
    layers = batchnorm_layers(model)
    if not layers or num_batches < 1:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    used, completed = 0, False
    device_type = next(model.parameters()).device.type
    model.train()
    try:
        with torch.no_grad():
            for batch in batches:
                if used >= num_batches:
                    break
                if prepare is not None:
                    batch = prepare(batch)
                data = torch.as_tensor(batch["data"])
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    model(data)
                used += 1
        completed = True
    finally:
        for m, momentum, old in zip(layers, momenta, saved, strict=True):
            m.momentum = momentum
            if used == 0 or not completed:  # no batch, or an error: keep the old statistics
                m.running_mean.copy_(old[0])
                m.running_var.copy_(old[1])
                m.num_batches_tracked.copy_(old[2])
        model.train(was_training)
    return used
