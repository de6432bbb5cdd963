"""Self-supervised pretraining task: reconstruct a paired en-face image from the OCT volume.

Morano et al. (MICCAI 2023) pretrain the segmentation network, with a one-channel head, to
predict an en-face modality from the volume: inverted FAF (``1 - FAF``, dark atrophy becomes
bright, like the lesion mask) or SLO. :class:`ReconstructionTask` implements
:class:`fpnunet.training.loop.TrainingTask` so that the generic epoch loop, checkpoints, resume,
``training_log.csv`` and ``progress.png`` are those of segmentation training:

* batches: :func:`fpnunet.training.loader.make_train_loader` in the modality's mode (``target``
  ``(N, 1, B, A)`` the en-face image in ``[0, 1]``, already inverted for FAF; ``mask`` 1 on real
  pixels, 0 on padding);
* loss: ``1 - SSIM(sigmoid(logits), target)`` with an 11 x 11 Gaussian window (sigma 1.5) on
  valid pixels only (:class:`~fpnunet.training.ssim.SSIMLoss`);
* validation: every held-out case is reconstructed *whole* (sliding window, no TTA, through the
  same :class:`~fpnunet.inference.predictor.Predictor` as segmentation) and compared with its
  target: ``val_loss`` (1 - SSIM) and ``val_ssim``, means over cases; ``val_ssim`` picks
  ``checkpoint_best.pth``. Each validation also draws ``reconstructions/epoch_XXX.png``: for a few
  validation cases, the volume's mean projection over depth, the target and the reconstruction.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpnunet.atomic import atomic_path
from fpnunet.errors import FPNError
from fpnunet.inference.predictor import Predictor
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.segmentation import load_volume
from fpnunet.training.ssim import SSIMLoss, ssim

PICTURE_DIR = "reconstructions"
INVERTED_BY_DEFAULT = ("FAF",)
"""Modalities whose target is ``1 - image`` unless told otherwise (the loader's rule)."""


# ----------------------------------------------------------------------------- cases
def inverts(modality: str, invert: bool | None = None) -> bool:
    """Whether the target of ``modality`` is ``1 - image`` (default: FAF yes, others no)."""
    return modality.upper() in INVERTED_BY_DEFAULT if invert is None else bool(invert)


def preprocessed_cases(data_dir: str | Path, hint: str | None = None) -> list[str]:
    """Every case of a complete preprocessed ``<data_identifier>`` folder, labelled or not
    (:meth:`fpnunet.preprocessed_dataset.PreprocessedDataset.open`). Only training cases
    (``imagesTr``) are ever preprocessed into it."""
    return PreprocessedDataset.open(data_dir, hint).case_names


def cases_with_modality(data_dir: str | Path, modality: str, hint: str | None = None) -> list[str]:
    """The preprocessed cases that have the en-face image ``CASE_<modality>.npy``."""
    return PreprocessedDataset.open(data_dir, hint).with_enface(modality)


def split_holdout(cases: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, val)``: a seeded share ``fraction`` of ``cases`` held out for validation.

    ``round(fraction * n)`` cases, at least one when ``fraction > 0``, and never all of them (a
    single case is never held out: there would be nothing left to train on). The draw is a seeded
    permutation of the *sorted* names, so it depends only on the set of cases, ``fraction`` and
    ``seed``. Both lists are returned sorted.
    """
    if not 0.0 <= fraction < 1.0 or math.isnan(fraction):
        raise FPNError(f"--val-fraction must lie in [0, 1), got {fraction}")
    names = sorted(set(cases))
    n = len(names)
    n_val = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(names[i] for i in order[:n_val])
    return sorted(set(names) - set(val)), val


# ----------------------------------------------------------------------------- pictures
def mean_projection(volume: np.ndarray) -> np.ndarray:
    """Mean over depth of channel 0 of a preprocessed volume ``(C, B, D, A)`` -> ``(B, A)``."""
    return np.asarray(volume[0], dtype=np.float32).mean(axis=1)


def draw_reconstructions(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]],
    path: str | Path,
    title: str = "",
    target_name: str = "target",
    aspect: float = 1.0,
) -> None:
    """One PNG, one row per case: volume mean projection, target, reconstruction.

    ``rows``: ``(case, projection (B, A), target (B, A), reconstruction (B, A), ssim)``; ``aspect``:
    the height / width of one pixel (``spacing_B / spacing_A``) so the en-face plane looks physical.
    Written atomically.
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    if not rows:
        return
    ncols = 3
    b, a = rows[0][2].shape
    panel_w = 3.0
    panel_h = float(np.clip(panel_w * b * aspect / max(a, 1), 0.6, 6.0))
    fig = Figure(figsize=(panel_w * ncols, (panel_h + 0.5) * len(rows) + 0.4), dpi=80)
    axes = np.asarray(fig.subplots(len(rows), ncols, squeeze=False))
    for r, (case, proj, target, recon, score) in enumerate(rows):
        lo, hi = np.percentile(proj, [0.5, 99.5]) if proj.size else (0.0, 1.0)
        panels = [(proj, f"{case}: OCT mean projection", (lo, hi if hi > lo else lo + 1)),
                  (target, target_name, (0.0, 1.0)),
                  (recon, f"reconstruction (SSIM {score:.3f})", (0.0, 1.0))]
        for c, (img, label, (vmin, vmax)) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


# ----------------------------------------------------------------------------- the task
@dataclass
class ReconstructionTask:
    """En-face reconstruction pretraining (a :class:`~fpnunet.training.loop.TrainingTask`).

    Args:
        plan, config_name: the plan and its configuration (patch, batch, depth, network).
        data_dir: the preprocessed ``<data_identifier>`` folder.
        modality: the en-face target (``"FAF"``, ``"SLO"``, any modality of the dataset).
        train_cases, val_cases: cases that have the modality (training / held-out).
        seed: loader seed (batches are deterministic per ``(seed, epoch)``).
        device: where validation runs.
        picture_dir: where ``epoch_XXX.png`` go (``None``: no pictures).
        n_pictures: validation cases drawn per picture.
        batch_size, num_workers, augment: loader overrides (``None``: plan / loader defaults).
        invert: target ``1 - image`` (``None``: FAF inverted, others not, as the loader does).
    """

    plan: Plan
    config_name: str
    data_dir: Path
    modality: str
    train_cases: list[str]
    val_cases: list[str]
    seed: int = 0
    device: str = "cpu"
    picture_dir: Path | None = None
    n_pictures: int = 4
    batch_size: int | None = None
    num_workers: int | None = None
    augment: bool | None = None
    invert: bool | None = None
    metric_columns: tuple[str, ...] = ("val_loss", "val_ssim")
    score_column: str | None = "val_ssim"
    loss_fn: SSIMLoss = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.picture_dir = Path(self.picture_dir) if self.picture_dir is not None else None
        self.loss_fn = SSIMLoss()
        self.inverted = inverts(self.modality, self.invert)
        if not self.train_cases:
            raise FPNError(f"{self.data_dir}: no training case has a {self.modality} image to pretrain on")

    # ------------------------------------------------------------------ training
    def train_batches(self, epoch: int) -> Any:
        from fpnunet.training.loader import make_train_loader

        kwargs: dict[str, Any] = {}
        if self.augment is not None:
            kwargs["augment"] = self.augment
        if self.invert is not None:
            kwargs["invert"] = self.invert
        return make_train_loader(
            self.data_dir, self.train_cases, self.plan.configuration(self.config_name), mode=self.modality,
            batch_size=self.batch_size, seed=self.seed, epoch=epoch, num_workers=self.num_workers, **kwargs,
        )

    def loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """``1 - SSIM(sigmoid(output), target)`` on valid pixels; ``output`` logits ``(N, 1, B, A)``."""
        return self.loss_fn(torch.sigmoid(output.float()), batch["target"].float(), batch.get("mask"))

    # ------------------------------------------------------------------ validation
    def load_target(self, case: str) -> np.ndarray:
        """The reconstruction target ``(B, A)`` float32 in ``[0, 1]`` of ``case`` (inverted for FAF)."""
        image = PreprocessedDataset(self.data_dir).load_enface(case, self.modality).astype(np.float32)
        return 1.0 - image if self.inverted else image

    def reconstruct(self, model: nn.Module, cases: Sequence[str]) -> dict[str, np.ndarray]:
        """Whole-plane reconstructions ``{case: (B, A) float32 in [0, 1]}`` (sliding window, no TTA)."""
        predictor = Predictor([model], self.plan, self.config_name, device=self.device, tta=False, num_outputs=1)
        return {case: predictor.predict_preprocessed(load_volume(self.data_dir, case))[0] for case in cases}

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """``{"val_loss", "val_ssim"}`` over the held-out cases (``{}`` without any); draws the picture."""
        if not self.val_cases:
            return {}
        recons = self.reconstruct(model, self.val_cases)
        scores: dict[str, float] = {}
        rows = []
        for i, case in enumerate(self.val_cases):
            target = self.load_target(case)
            recon = recons[case]
            with torch.no_grad():
                s = float(ssim(torch.from_numpy(recon)[None, None], torch.from_numpy(target)[None, None])[0])
            scores[case] = s
            if self.picture_dir is not None and i < self.n_pictures:
                volume = PreprocessedDataset(self.data_dir).load_volume(case, mmap=True)
                rows.append((case, mean_projection(volume), target, recon, s))
        finite = [v for v in scores.values() if math.isfinite(v)]
        mean_ssim = float(np.mean(finite)) if finite else math.nan
        if rows and self.picture_dir is not None:
            sb, sa = self.plan.enface_spacing
            name = f"1 - {self.modality}" if self.inverted else self.modality
            draw_reconstructions(rows, self.picture_dir / f"epoch_{epoch + 1:03d}.png",
                                 title=f"epoch {epoch + 1}: validation SSIM {mean_ssim:.4f}", target_name=name,
                                 aspect=float(sb / sa) if sa > 0 and sb > 0 else 1.0)
        return {"val_loss": 1.0 - mean_ssim, "val_ssim": mean_ssim}
