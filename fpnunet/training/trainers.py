"""Every built-in trainer, registered: ``fpn_train DATASET FOLD --trainer NAME`` (alias ``-tr``).

* ``supervised`` (default, :mod:`fpnunet.training.supervised`): the configuration's network on
  the labelled cases; model folder ``{config}__lf{fraction}__{tag}``.
* ``cmc`` (:mod:`fpnunet.training.cmc.trainer`): semi-supervised multimodal cross-modality
  collaboration; model folder ``{config}__lf{fraction}__{tag}__cmc``.
* ``reconstruction`` (:mod:`fpnunet.training.reconstruction`): the self-supervised en-face
  reconstruction that ``fpn_pretrain`` runs.

Each registers itself with :func:`fpnunet.training.trainer.register_trainer`; the registry
(:data:`fpnunet.training.trainer.TRAINERS`) imports a built-in trainer's module when its name is
first asked for, so a run imports only its own trainer. A new trainer is one module with one
decorator (and, to be found by name without importing it first, one line in that registry's
``modules``). The trainer is recorded in every
checkpoint and in the fold folder's ``run_config.json``; prediction needs neither: the
checkpoint's network spec rebuilds the model (its en-face inputs included).
"""
from __future__ import annotations

from fpnunet.training.trainer import TRAINERS, Trainer


def get_trainer(name: str) -> type[Trainer]:
    """The registered trainer class ``name``; an unknown name is a one-line error listing the others."""
    return TRAINERS.get(name)


def available_trainers() -> list[str]:
    return TRAINERS.names()
