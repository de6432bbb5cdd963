"""``--trainer cmc``: the registry entry (:mod:`fpnunet.training.trainers`) of the cmc trainer.

Model: :class:`fpnunet.networks.cmc.CMCNet` around the configuration's network (its OCT branch,
where ``--pretrained`` weights go) and the plan's en-face modalities. Task:
:class:`~fpnunet.training.cmc.task.CMCTask` on the labelled cases kept by ``--label-fraction`` and
the unlabelled ones. Loss and augmentation: the plan's values (``plans.json``), the en-face
misalignment included; this trainer overrides none of them.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.plans.training_params import AugmentParams, LossParams
from fpnunet.training.trainers import SupervisedTrainer


class CMCTrainer(SupervisedTrainer):
    name = "cmc"
    uses_unlabelled = True

    def check(self, plan: Plan) -> None:
        if not plan.enface_modalities:
            raise FPNError(f"--trainer cmc: dataset {plan.dataset_name} has no en-face modalities (dataset.json "
                           "'enface_modalities' and enfaceTr/CASE_MOD files); the cmc trainer needs SLO or FAF images")

    def network_spec(self, plan: Plan, config: Configuration) -> tuple[str, dict[str, Any]]:
        return "cmc", {"oct_network": config.network.name, "oct_kwargs": dict(config.network.kwargs),
                       "modalities": self.modalities(plan)}

    def pretrained_module(self, model: nn.Module) -> nn.Module:
        return model.oct  # type: ignore[return-value]

    def modalities(self, plan: Plan) -> list[str]:
        return list(plan.enface_modalities)

    def make_task(self, ctx: Any, hp: Any, device: str, loss: LossParams, augment: AugmentParams) -> Any:
        """The training task on ``ctx``'s cases with the resolved hyperparameters ``hp``."""
        from fpnunet.training.cmc.task import CMCTask

        return CMCTask(ctx.plan, ctx.config_name, ctx.data_dir, ctx.train_cases, ctx.val_cases, seed=hp.seed,
                       device=device, batch_size=hp.batch_size, num_workers=hp.num_workers,
                       oversample=hp.foreground_oversample, loss_params=loss, augment_params=augment,
                       unlabelled_cases=list(ctx.unlabelled_cases), modalities=self.modalities(ctx.plan))
