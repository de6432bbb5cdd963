"""``--trainer supervised`` (the default): the configuration's network on the labelled cases.

Batches: :func:`fpnunet.training.loader.make_train_loader` (``mode="seg"``, the fold's training
cases kept by ``--label-fraction``, en-face input channels when the network takes some); loss:
the config's (``dice_ce`` unless a subclass says otherwise), restricted to the batch ``mask``;
validation: every validation case predicted *whole* (:func:`~fpnunet.training.segmentation.validate_volumes`,
``val_loss`` and ``val_dice``); export: the final validation with flip TTA into ``validation/``
(:func:`~fpnunet.training.segmentation.export_validation`). Model folder
``{config}__lf{fraction}__{tag}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpnunet.networks.registry import network_class
from fpnunet.plans.plan import Plan
from fpnunet.results_layout import VALIDATION_DIR
from fpnunet.training.loader import make_train_loader
from fpnunet.training.run_config import RunConfig
from fpnunet.training.segmentation import channel_lut, export_validation, validate_volumes
from fpnunet.training.trainer import BatchSource, Trainer, register_trainer


@register_trainer("supervised")
class SupervisedTrainer(Trainer):
    """Supervised en-face segmentation (see the module docstring)."""

    metric_columns = ("val_loss", "val_dice")
    score_column = "val_dice"
    distributed_validation = True

    def __init__(self, config: RunConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self._lut = channel_lut(plan.labels, plan.num_outputs)
        self._identity = bool(torch.equal(self._lut, torch.arange(len(self._lut))))

    def train_batches(self, epoch: int) -> BatchSource:
        c = self.config
        return make_train_loader(
            self.data_dir, list(c.train_cases), self.configuration, mode="seg", batch_size=c.batch_size, seed=c.seed,
            epoch=epoch, num_workers=c.num_workers, oversample=c.foreground_oversample,
            pin_memory=c.device.startswith("cuda"), params=c.augment_params, augmentation=c.augmentation,
            enface=list(c.enface_inputs), slabs=network_class(c.network).training_slabs(**c.network_kwargs),
        )

    def channels(self, target: torch.Tensor) -> torch.Tensor:
        """Label values -> output channel indices (unchanged when they are the same)."""
        if self._identity:
            return target
        lut = self._lut.to(target.device)
        return lut[target.long().clamp(0, len(lut) - 1)]

    def loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_fn(output, self.channels(batch["target"]), batch.get("mask"))

    def validation_loss(self) -> nn.Module:
        """The loss ``val_loss`` reports (of whole-volume probabilities)."""
        return self.loss_fn

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return validate_volumes(model, self.plan, self.config.config, self.data_dir, list(self.config.val_cases),
                                device=self.config.device, tta=False, loss_fn=self.validation_loss(),
                                precision=self.config.precision)  # validated as trained, whatever the CPU

    def header(self) -> str:
        c = self.config
        unlabelled = f", {len(c.unlabelled_cases)} unlabelled" if self.uses_unlabelled else ""
        return (f"{c.dataset} / {c.config} / {self.fold_dir.name}: {len(c.train_cases)} training cases "
                f"(label fraction {c.label_fraction:g}){unlabelled}, {len(c.val_cases)} validation cases, "
                f"trainer {c.trainer}")

    def export(self, model: nn.Module, checkpoint: str, epoch: int, best_score: float | None) -> dict[str, Any] | None:
        """The final validation: flip TTA, masks on the raw geometry, ``validation/summary.json``."""
        c = self.config
        if not c.val_cases:
            print("no validation cases in this fold: final validation skipped")
            return None
        out = self.fold_dir / VALIDATION_DIR
        summary = export_validation(model, self.plan, c.config, self.data_dir, list(c.val_cases), out,
                                    None if c.raw_dir is None else Path(c.raw_dir), device=c.device, tta=True,
                                    extra={"checkpoint": checkpoint, "epoch": epoch, "tta": True},
                                    progress=c.progress, precision=c.precision,
                                    save_probabilities=c.save_probabilities)
        dice = summary["foreground_mean"]["Dice"]
        print(f"final validation ({checkpoint}, {len(c.val_cases)} cases): mean Dice {dice:.4f} (flip TTA) "
              f"-> {out / 'summary.json'}")
        return summary
