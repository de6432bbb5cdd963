"""``--trainer cmc``: semi-supervised multimodal training by cross-modality collaboration.

Model: :class:`fpnunet.networks.cmc.CMCNet` around the configuration's network (its OCT branch,
where ``--pretrained`` weights go) and the plan's en-face modalities. Batches: the labelled cases
kept by ``--label-fraction`` and the unlabelled ones (cases without a label, and labelled ones
beyond the fraction), with their en-face images (:class:`~fpnunet.training.cmc.data.CMCDataLoader`,
augmentation ``cmc``: the shared spatial transforms plus the en-face image's own misalignment).
Loss ``cmc`` (:class:`~fpnunet.training.cmc.losses.CMCLoss`); validation: the OCT branch's
whole-volume validation, as the supervised trainer's. Loss and augmentation values: the plan's
(``plans.json``); this trainer overrides none of them. Model folder ``...__cmc``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.training.augment import load_margin
from fpnunet.training.cmc.data import CMCDataLoader
from fpnunet.training.cmc.losses import CMCLoss
from fpnunet.training.loader import TrainLoader, resolve_data_dir
from fpnunet.training.run_config import RunConfig
from fpnunet.training.supervised import SupervisedTrainer
from fpnunet.training.trainer import BatchSource, register_trainer


@register_trainer("cmc")
class CMCTrainer(SupervisedTrainer):
    default_loss = "cmc"
    default_augmentation = "cmc"
    uses_unlabelled = True
    loss_fn: CMCLoss

    def __init__(self, config: RunConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self.modalities = list(plan.enface_modalities)
        if not self.modalities:
            raise FPNError("the cmc trainer needs en-face modalities (the plan's enface_modalities is empty)")
        self._epoch = 0
        self.last_parts: dict[str, float] = {}

    @classmethod
    def check(cls, plan: Plan) -> None:
        if not plan.enface_modalities:
            raise FPNError(f"--trainer cmc: dataset {plan.dataset_name} has no en-face modalities (dataset.json "
                           "'enface_modalities' and enfaceTr/CASE_MOD files); the cmc trainer needs SLO or FAF images")

    @classmethod
    def network_spec(cls, plan: Plan, configuration: Configuration) -> tuple[str, dict[str, Any]]:
        return "cmc", {"oct_network": configuration.network.name, "oct_kwargs": dict(configuration.network.kwargs),
                       "modalities": list(plan.enface_modalities)}

    def pretrained_module(self, model: nn.Module) -> nn.Module:
        return model.oct  # type: ignore[return-value]

    def validation_loss(self) -> nn.Module:
        return self.loss_fn.seg

    def ramp(self) -> float:
        """Consistency weight factor of the current epoch (linear ramp over ``consistency_rampup_epochs``)."""
        n = self.config.loss_params.consistency_rampup_epochs
        return 1.0 if n <= 0 else min(1.0, (self._epoch + 1) / n)

    def train_batches(self, epoch: int) -> BatchSource:
        c = self.config
        self._epoch = epoch
        patch = tuple(int(p) for p in self.configuration.patch_size)
        loader = CMCDataLoader(resolve_data_dir(self.data_dir, self.configuration), list(c.train_cases),
                               list(c.unlabelled_cases), self.modalities, patch, c.batch_size, c.batch_size,
                               oversample_foreground=c.foreground_oversample,
                               margin=load_margin(patch, c.augment_params), seed=c.seed, epoch=epoch,
                               num_workers=max(1, c.num_workers))
        if loader.depth != self.configuration.depth:
            raise FPNError(f"{loader.labelled[0].volume}: depth {loader.depth}, but configuration "
                           f"{self.configuration.data_identifier!r} expects {self.configuration.depth} "
                           "(re-run preprocessing)")
        return TrainLoader(loader, self.augmentation(enface=True), c.num_workers)  # type: ignore[arg-type]

    def loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        if not isinstance(output, dict):
            raise FPNError("the cmc trainer needs the cmc model's training outputs "
                           "(was the model built by --trainer cmc?)")
        total, self.last_parts = self.loss_fn(output, self.channels(batch["target"]), batch.get("mask"),
                                              self.channels(batch["enface_target"]), batch.get("enface_mask"),
                                              batch["labelled"], self.ramp())
        return total
