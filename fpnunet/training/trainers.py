"""Trainers by name: ``fpn_train DATASET FOLD --trainer NAME`` (alias ``-tr``).

A trainer decides what is trained and how, from the plan: the model built around the
configuration's network, the task (batches and loss), and which loss and augmentation values it
overrides on top of the plan's (``plans.json`` ``loss`` / ``augmentation``; hyperparameters are
resolved once, here, never by subclassing). Registered trainers:

* ``supervised`` (default): the configuration's network on the labelled cases (what ``fpn_train``
  always did); model folder ``{config}__lf{fraction}__{tag}``.
* ``cmc``: semi-supervised multimodal cross-modality collaboration
  (:mod:`fpnunet.training.cmc.trainer`); model folder ``{config}__lf{fraction}__{tag}__cmc``.

The trainer is recorded in every checkpoint (``args["trainer"]``; the network spec rebuilds its
model) and in the model folder's ``trainer.json`` (name, en-face modalities the model can use),
so prediction rebuilds the right model from the folder alone.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from fpnunet.atomic import load_json, save_json
from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.plans.training_params import AugmentParams, LossParams, override

TRAINER_FILE = "trainer.json"
DEFAULT_TRAINER = "supervised"
_TRAINERS: dict[str, str] = {
    "supervised": "fpnunet.training.trainers:SupervisedTrainer",
    "cmc": "fpnunet.training.cmc.trainer:CMCTrainer",
}


class SupervisedTrainer:
    """The configuration's network on the labelled cases (today's behaviour)."""

    name = "supervised"
    uses_unlabelled = False
    loss_overrides: dict[str, Any] = {}
    augment_overrides: dict[str, Any] = {}

    def check(self, plan: Plan) -> None:
        """Raise :class:`FPNError` when this trainer cannot train on ``plan`` (before any folder is touched)."""

    def folder_suffix(self) -> str:
        return "" if self.name == DEFAULT_TRAINER else f"__{self.name}"

    def params(self, config: Configuration) -> tuple[LossParams, AugmentParams]:
        """The plan's loss and augmentation values with this trainer's overrides."""
        return (override(config.loss, self.loss_overrides, f"trainer {self.name}"),
                override(config.augmentation, self.augment_overrides, f"trainer {self.name}"))

    def network_spec(self, plan: Plan, config: Configuration) -> tuple[str, dict[str, Any]]:
        """``(registered network name, kwargs)`` of the model this trainer trains."""
        return config.network.name, dict(config.network.kwargs)

    def pretrained_module(self, model: nn.Module) -> nn.Module:
        """The part of the model ``--pretrained`` weights go into."""
        return model

    def modalities(self, plan: Plan) -> list[str]:
        """En-face modalities the model takes (none: OCT only)."""
        return []

    def make_task(self, ctx: Any, hp: Any, device: str, loss: LossParams, augment: AugmentParams) -> Any:
        """The training task on ``ctx``'s cases with the resolved hyperparameters ``hp``."""
        from fpnunet.training.segmentation import SegmentationTask

        return SegmentationTask(ctx.plan, ctx.config_name, ctx.data_dir, ctx.train_cases, ctx.val_cases,
                                seed=hp.seed, device=device, batch_size=hp.batch_size,
                                num_workers=hp.num_workers, oversample=hp.foreground_oversample, loss_params=loss,
                                augment_params=augment, enface=list(getattr(ctx, "enface_inputs", [])))

    def record(self, plan: Plan, loss: LossParams, augment: AugmentParams) -> dict[str, Any]:
        """What ``trainer.json`` and the checkpoints' ``args`` say about this trainer (plain types)."""
        return {"trainer": self.name, "enface_modalities": self.modalities(plan),
                "fused_prediction": bool(self.modalities(plan)), "loss": _plain(asdict(loss)),
                "augmentation": _plain(asdict(augment))}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def available_trainers() -> list[str]:
    return sorted(_TRAINERS)


def get_trainer(name: str) -> SupervisedTrainer:
    """The registered trainer ``name``; an unknown name is an :class:`FPNError` listing the known ones."""
    if name not in _TRAINERS:
        raise FPNError(f"--trainer {name!r}: unknown trainer; registered: {', '.join(available_trainers())}")
    module, attr = _TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), attr)()


def write_trainer_file(model_dir: Path, record: dict[str, Any]) -> None:
    save_json(record, Path(model_dir) / TRAINER_FILE)


def read_trainer_file(model_dir: Path) -> dict[str, Any]:
    """``trainer.json`` of a model folder; a folder without one was trained by ``supervised``."""
    path = Path(model_dir) / TRAINER_FILE
    if not path.is_file():
        return {"trainer": DEFAULT_TRAINER, "enface_modalities": [], "fused_prediction": False}
    try:
        data = load_json(path)
    except ValueError as exc:
        raise FPNError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("enface_modalities", []), list):
        raise FPNError(f"{path}: expected {{\"trainer\": NAME, \"enface_modalities\": [...]}}")
    return data
