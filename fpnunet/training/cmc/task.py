"""The cmc training task: labelled + unlabelled batches with en-face images, the :class:`CMCLoss`,
and the OCT branch's whole-volume validation (as the supervised task's)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fpnunet.errors import FPNError
from fpnunet.training.cmc.losses import CMCLoss
from fpnunet.training.segmentation import SegmentationTask


@dataclass
class CMCTask(SegmentationTask):
    """:class:`~fpnunet.training.segmentation.SegmentationTask` with unlabelled cases and en-face images.

    ``unlabelled_cases``: cases without a label (no ``labelsTr``) and the fold's labelled cases
    beyond ``--label-fraction``; ``modalities``: the en-face modalities, in the model's channel order;
    ``unlabelled_batch_size``: unlabelled patches per step (default: the batch size).
    """

    unlabelled_cases: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    unlabelled_batch_size: int | None = None
    cmc_loss: CMCLoss = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.modalities:
            raise FPNError("the cmc trainer needs en-face modalities (the plan's enface_modalities is empty)")
        self.cmc_loss = CMCLoss(self.plan.num_outputs, self.loss_params)  # type: ignore[arg-type]
        self._epoch = 0
        self.last_parts: dict[str, float] = {}

    def ramp(self) -> float:
        """Consistency weight factor of the current epoch (linear ramp over ``consistency_rampup_epochs``)."""
        n = self.loss_params.consistency_rampup_epochs  # type: ignore[union-attr]
        return 1.0 if n <= 0 else min(1.0, (self._epoch + 1) / n)

    def train_batches(self, epoch: int) -> Any:
        from fpnunet.training.augment import load_margin
        from fpnunet.training.cmc.augment import get_cmc_transforms
        from fpnunet.training.cmc.data import CMCDataLoader
        from fpnunet.training.loader import TrainLoader, default_num_workers, resolve_data_dir

        self._epoch = epoch
        config = self.plan.configuration(self.config_name)
        patch = tuple(int(p) for p in config.patch_size)
        n = int(self.batch_size or config.batch_size)
        workers = default_num_workers() if self.num_workers is None else int(self.num_workers)
        params = self.augment_params
        over = config.training.foreground_oversample if self.oversample is None else float(self.oversample)
        loader = CMCDataLoader(resolve_data_dir(self.data_dir, config), self.train_cases, self.unlabelled_cases,
                               self.modalities, patch, n, self.unlabelled_batch_size or n,  # type: ignore[arg-type]
                               oversample_foreground=over, margin=load_margin(patch, params), seed=self.seed,
                               epoch=epoch, num_workers=max(1, workers))
        if loader.depth != config.depth:
            raise FPNError(f"{loader.labelled[0].volume}: depth {loader.depth}, but configuration "
                           f"{config.data_identifier!r} expects {config.depth} (re-run preprocessing)")
        return TrainLoader(loader, get_cmc_transforms(patch, params), workers)  # type: ignore[arg-type]

    def loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        if not isinstance(output, dict):
            raise FPNError("the cmc task needs the cmc model's training outputs "
                           "(was the model built by --trainer cmc?)")
        target, e_target = batch["target"], batch["enface_target"]
        if not self._identity:
            lut = self._lut.to(target.device)
            target = lut[target.long().clamp(0, len(lut) - 1)]
            e_target = lut[e_target.long().clamp(0, len(lut) - 1)]
        total, self.last_parts = self.cmc_loss(output, target, batch.get("mask"), e_target, batch.get("enface_mask"),
                                               batch["labelled"], self.ramp())
        return total
