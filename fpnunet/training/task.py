"""The task interface of the epoch loop (:mod:`fpnunet.training.loop`).

A :class:`TrainingTask` supplies what differs between segmentation training and self-supervised
pretraining: the batches of an epoch (a :class:`BatchSource`), the loss of a forward pass and the
validation; the loop does the rest. :data:`EpochCallback` is what a caller hooks onto each epoch.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

EpochCallback = Callable[[int, dict[str, Any]], None]
"""``callback(epochs_done, record)``, called after the epoch's checkpoints are on disk."""


@runtime_checkable
class BatchSource(Protocol):
    """An epoch's batches: iterable of dicts of numpy arrays (``data`` ``(N, C, B, D, A)`` ...)."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def trainer_name(task: object) -> str:
    """The name a plot title shows: ``task.trainer_name``, else the task class without ``Task``."""
    return str(getattr(task, "trainer_name", None) or type(task).__name__.removesuffix("Task").lower())


@runtime_checkable
class TrainingTask(Protocol):
    """What the loop needs from a task (segmentation, en-face reconstruction, ...).

    Attributes:
        metric_columns: the validation columns :meth:`validate` returns, in log order,
            e.g. ``("val_loss", "val_dice")``.
        score_column: the column maximised for ``checkpoint_best.pth`` (``None``: no best).
    """

    metric_columns: tuple[str, ...]
    score_column: str | None

    def train_batches(self, epoch: int) -> BatchSource:
        """A loader yielding at least ``iterations_per_epoch`` batches, deterministic per epoch."""
        ...

    def loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Scalar loss of ``output = model(batch["data"])``; ``batch`` holds device tensors."""
        ...

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Validation metrics (keys from :attr:`metric_columns`; ``{}`` when nothing to validate).

        Called with the model in training mode; it may switch to eval (the loop switches back).
        """
        ...
