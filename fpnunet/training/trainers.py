"""Every built-in trainer, registered: ``fpn_train DATASET FOLD --trainer NAME`` (alias ``-tr``).

* ``supervised`` (default, :mod:`fpnunet.training.supervised`): the configuration's network on
  the labelled cases; model folder ``{config}__lf{fraction}__{tag}``.
* ``cmc`` (:mod:`fpnunet.training.cmc.trainer`): semi-supervised multimodal cross-modality
  collaboration; model folder ``{config}__lf{fraction}__{tag}__cmc``.
* ``reconstruction`` (:mod:`fpnunet.training.reconstruction`): the self-supervised en-face
  reconstruction that ``fpn_pretrain`` runs.

Importing this module registers them (:func:`fpnunet.training.trainer.register_trainer`); a new
trainer is one module with one decorator, imported here. The trainer is recorded in every
checkpoint and in the fold folder's ``run_config.json``; prediction needs neither: the
checkpoint's network spec rebuilds the model (its en-face inputs included).
"""
from __future__ import annotations

from fpnunet.training import reconstruction, supervised
from fpnunet.training.cmc import trainer as cmc_trainer
from fpnunet.training.trainer import TRAINERS, Trainer

BUILT_IN = (supervised.SupervisedTrainer, cmc_trainer.CMCTrainer, reconstruction.ReconstructionTrainer)


def get_trainer(name: str) -> type[Trainer]:
    """The registered trainer class ``name``; an unknown name is a one-line error listing the others."""
    return TRAINERS.get(name)


def available_trainers() -> list[str]:
    return TRAINERS.names()
