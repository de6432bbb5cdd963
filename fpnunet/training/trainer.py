"""The :class:`Trainer`: what a run trains and how, as named hooks; trainers registered by name.

A trainer is one class with one decorator (docs/training.md has a worked example)::

    @register_trainer("mine")
    class MyTrainer(SupervisedTrainer):
        default_loss = "my_loss"          # any name registered in fpnunet.training.losses.LOSSES

``fpn_train --trainer mine`` then runs it (``fpn_pretrain`` runs ``reconstruction``). The hooks,
in the order a run calls them:

* class hooks, while :func:`fpnunet.training.configure.build_run_config` builds the
  :class:`~fpnunet.training.run_config.RunConfig` (before any folder is touched): :meth:`check`,
  :meth:`network_spec`, :meth:`num_outputs`, and the class attributes ``default_loss``,
  ``default_augmentation``, ``loss_overrides``, ``augment_overrides``, ``uses_unlabelled``,
  ``pretraining``;
* on the instance (``Trainer(config, plan)``): :meth:`build_network`, :meth:`pretrained_module`,
  :meth:`build_loss`, :meth:`build_optimizer` (optimizer and schedule), :meth:`augmentation`,
  :meth:`train_batches`, :meth:`loss`, :meth:`validate` (called by the epoch loop,
  :mod:`fpnunet.training.loop`) and :meth:`export` (after the last epoch, or for ``fpn_train --val``).

Loss, optimizer, schedule and augmentation are themselves chosen by name from registries
(:data:`~fpnunet.training.losses.LOSSES`, :data:`~fpnunet.training.optim.OPTIMIZERS`,
:data:`~fpnunet.training.optim.SCHEDULES`, :data:`~fpnunet.training.augment.AUGMENTATIONS`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fpnunet.checkpoint import model_spec, seed_everything
from fpnunet.networks.registry import build_model
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.results_layout import trainer_suffix
from fpnunet.training.augment import AUGMENTATIONS
from fpnunet.training.losses import LOSSES
from fpnunet.training.optim import OPTIMIZERS, SCHEDULES
from fpnunet.training.registry import Registry
from fpnunet.training.run_config import RunConfig


class BatchSource(Protocol):
    """An epoch's batches: iterable of dicts of numpy arrays (``data`` ``(N, C, B, D, A)`` ...)."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class Trainer:
    """Base class of registered trainers (see the module docstring for the hooks)."""

    name: ClassVar[str] = ""
    default_loss: ClassVar[str] = "dice_ce"
    default_augmentation: ClassVar[str] = "default"
    loss_overrides: ClassVar[dict[str, Any]] = {}
    augment_overrides: ClassVar[dict[str, Any]] = {}
    uses_unlabelled: ClassVar[bool] = False
    """Whether the run gets the fold's unlabelled cases (``RunConfig.unlabelled_cases``)."""
    pretraining: ClassVar[bool] = False
    """Epochs and lr default to the plan's ``pretrain_epochs`` / ``pretrain_lr``; no ``--pretrained``."""
    watched: ClassVar[tuple[str, ...]] = ("trainer", "lr", "weight_decay", "batch_size", "iterations_per_epoch",
                                          "seed", "train_cases", "label_fraction", "precision")
    """Settings whose change on ``--continue`` is warned about."""
    run_dirs: ClassVar[tuple[str, ...]] = ()
    """Folders of the fold folder this trainer writes (deleted when a run starts over)."""
    metric_columns: tuple[str, ...] = ("val_loss",)
    score_column: str | None = None
    """The validation column maximised for ``checkpoint_best.pth`` (``None``: no best)."""
    distributed_validation: bool = False
    """:meth:`validate` splits its cases over the ranks of a distributed run itself."""

    def __init__(self, config: RunConfig, plan: Plan) -> None:
        self.config = config
        self.plan = plan
        self.configuration = plan.configuration(config.config)
        self.data_dir = Path(config.data_dir)
        self.fold_dir = Path(config.fold_dir)
        self.loss_fn = self.build_loss()

    # ------------------------------------------------------------------ class hooks (RunConfig)
    @classmethod
    def check(cls, plan: Plan) -> None:
        """Raise :class:`~fpnunet.errors.FPNError` when this trainer cannot train on ``plan``."""

    @classmethod
    def network_spec(cls, plan: Plan, configuration: Configuration) -> tuple[str, dict[str, Any]]:
        """``(registered network name, kwargs)`` of the model this trainer trains."""
        return configuration.network.name, dict(configuration.network.kwargs)

    @classmethod
    def num_outputs(cls, plan: Plan) -> int:
        return plan.num_outputs

    @classmethod
    def folder_suffix(cls) -> str:
        """Added to the model folder's name (``""`` for the default trainer, ``supervised``)."""
        return trainer_suffix(cls.name)

    # ------------------------------------------------------------------ model, loss, optimizer
    def build_network(self) -> tuple[dict[str, Any], nn.Module]:
        """``(spec, model)``: the network of the config, initialised after seeding everything."""
        c = self.config
        seed_everything(c.seed)
        spec = model_spec(c.network, c.network_kwargs, c.in_channels, c.num_outputs, c.config)
        return spec, build_model(spec)

    def pretrained_module(self, model: nn.Module) -> nn.Module:
        """The part of the model ``--pretrained`` weights go into."""
        return model

    def build_loss(self) -> nn.Module:
        return LOSSES.get(self.config.loss)(self.config.num_outputs, self.config.loss_params)

    def build_optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """``(optimizer, per-epoch schedule)`` named by the config."""
        optimizer = OPTIMIZERS.get(self.config.optimizer)([p for p in model.parameters() if p.requires_grad],
                                                           self.config)
        return optimizer, SCHEDULES.get(self.config.lr_schedule)(optimizer, self.config.epochs)

    def augmentation(self, mode: str = "seg", enface: bool = False) -> Callable[..., Any]:
        """The training transform named by the config (``enface``: en-face inputs ride along)."""
        patch = tuple(int(p) for p in self.configuration.patch_size)
        return AUGMENTATIONS.get(self.config.augmentation)(patch, self.config.augment_params, mode, enface)

    # ------------------------------------------------------------------ the epoch loop's hooks
    def train_batches(self, epoch: int) -> BatchSource:
        """A loader yielding at least ``iterations_per_epoch`` batches, deterministic per epoch."""
        raise NotImplementedError

    def loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        """Scalar loss of ``output = model(batch["data"])``; ``batch`` holds device tensors."""
        return self.loss_fn(output, batch["target"], batch.get("mask"))

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Validation metrics (keys from :attr:`metric_columns`; ``{}``: nothing to validate)."""
        return {}

    # ------------------------------------------------------------------ the run's hooks
    def check_start(self) -> None:
        """Refuse to start in the fold folder (before it is touched); e.g. a finished run."""

    def start(self, resumed: bool) -> None:
        """After the fold folder is opened (rank 0): the trainer's own files."""

    def header(self) -> str:
        """The first line printed about the run."""
        c = self.config
        return (f"{c.dataset} / {c.config} / {self.fold_dir.name}: {len(c.train_cases)} training cases, "
                f"{len(c.val_cases)} validation cases, trainer {c.trainer}")

    def export(self, model: nn.Module, checkpoint: str, epoch: int, best_score: float | None) -> dict[str, Any] | None:
        """After training (rank 0): the final outputs; returns what the command reports on (or ``None``)."""
        return None


TRAINERS: Registry[type[Trainer]] = Registry("trainer", modules={
    "supervised": "fpnunet.training.supervised",
    "cmc": "fpnunet.training.cmc.trainer",
    "reconstruction": "fpnunet.training.reconstruction",
})
"""The trainers by name; the built-in ones are imported when first asked for (a run imports only its own)."""


def register_trainer(name: str) -> Callable[[type[Trainer]], type[Trainer]]:
    """Class decorator: ``@register_trainer("mine")`` (sets the class's ``name``)."""

    def deco(cls: type[Trainer]) -> type[Trainer]:
        cls.name = name
        return TRAINERS.register(name)(cls)

    return deco
