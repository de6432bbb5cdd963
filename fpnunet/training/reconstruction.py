"""Self-supervised pretraining task: reconstruct a paired en-face image from the OCT volume.

Morano et al. (MICCAI 2023) pretrain the segmentation network, with a one-channel head, to
predict an en-face modality from the volume: inverted FAF (``1 - FAF``, dark atrophy becomes
bright, like the lesion mask) or SLO. :class:`ReconstructionTrainer` is the registered trainer
``reconstruction`` (:mod:`fpnunet.training.trainer`) that ``fpn_pretrain`` runs, so the epoch
loop, checkpoints, resume, ``training_log.csv`` and ``progress.png`` are those of segmentation
training:

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpnunet import distributed as fdist
from fpnunet.atomic import atomic_path, save_json
from fpnunet.errors import FPNError
from fpnunet.inference.predictor import Predictor
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.results_layout import FINAL, run_state
from fpnunet.training.loader import make_train_loader
from fpnunet.training.run_config import RunConfig
from fpnunet.training.ssim import ssim
from fpnunet.training.trainer import Trainer, register_trainer

PICTURE_DIR = "reconstructions"
SPLIT_FILE = "pretrain_split.json"
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


# ----------------------------------------------------------------------------- the trainer
@register_trainer("reconstruction")
class ReconstructionTrainer(Trainer):
    """En-face reconstruction pretraining (``fpn_pretrain``; see the module docstring).

    From the :class:`~fpnunet.training.run_config.RunConfig`: ``target`` (the en-face modality,
    e.g. ``"FAF"``), ``invert`` (target ``1 - image``), ``train_cases``/``val_cases`` (cases that
    have the modality, training / held out), ``n_pictures`` (validation cases drawn per picture,
    in ``reconstructions/``), ``augmentation`` (``"none"``: plain random crops).
    """

    default_loss = "ssim"
    pretraining = True
    watched = ("lr", "weight_decay", "batch_size", "iterations_per_epoch", "seed", "train_cases", "target",
               "invert", "augmentation", "precision")
    run_dirs = (PICTURE_DIR,)
    metric_columns = ("val_loss", "val_ssim")
    score_column = "val_ssim"

    def __init__(self, config: RunConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self.modality = config.target
        self.inverted = bool(config.invert)
        self.picture_dir = self.fold_dir / PICTURE_DIR if config.n_pictures else None
        if not config.train_cases:
            raise FPNError(f"{self.data_dir}: no training case has a {self.modality} image to pretrain on")

    @classmethod
    def num_outputs(cls, plan: Plan) -> int:
        return 1

    @classmethod
    def network_spec(cls, plan: Plan, configuration: Configuration) -> tuple[str, dict[str, Any]]:
        """The configuration's network without en-face input channels: the pretext reconstructs an
        en-face image from the volume alone."""
        kwargs = dict(configuration.network.kwargs)
        if kwargs.get("enface_inputs"):
            kwargs["enface_inputs"] = []
        return configuration.network.name, kwargs

    # ------------------------------------------------------------------ training
    def train_batches(self, epoch: int) -> Any:
        c = self.config
        return make_train_loader(
            self.data_dir, list(c.train_cases), self.configuration, mode=self.modality, batch_size=c.batch_size,
            seed=c.seed, epoch=epoch, num_workers=c.num_workers, invert=self.inverted, params=c.augment_params,
            augmentation=c.augmentation, oversample=c.foreground_oversample,
        )

    def loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """``1 - SSIM(sigmoid(output), target)`` on valid pixels; ``output`` logits ``(N, 1, B, A)``."""
        return self.loss_fn(torch.sigmoid(output.float()), batch["target"].float(), batch.get("mask"))

    # ------------------------------------------------------------------ the run
    def check_start(self) -> None:
        c = self.config
        if fdist.is_main() and run_state(self.fold_dir) == "finished" and not (c.resume or c.overwrite):
            raise FPNError(f"{self.fold_dir} holds a finished pretraining run (checkpoint_final.pth). Pass "
                           "--overwrite to pretrain again, or --continue with more --epochs to extend it")

    def start(self, resumed: bool) -> None:
        c = self.config
        save_json({"target": c.target, "val_fraction": c.val_fraction, "seed": c.seed,
                   "train": list(c.train_cases), "val": list(c.val_cases)}, self.fold_dir / SPLIT_FILE)

    def header(self) -> str:
        c = self.config
        return (f"{c.dataset} / {c.config} / pretraining on {'1 - ' if self.inverted else ''}{c.target}: "
                f"{len(c.train_cases)} training cases, {len(c.val_cases)} held out for validation")

    def export(self, model: nn.Module, checkpoint: str, epoch: int, best_score: float | None) -> dict[str, Any] | None:
        best = f", best validation SSIM {best_score:.4f}" if best_score is not None else ""
        final = self.fold_dir / FINAL
        print(f"pretraining done{best}: {final}")
        print(f"fine-tune with: fpn_train {self.config.dataset} FOLD --pretrained auto (or --pretrained {final})")
        return None

    # ------------------------------------------------------------------ validation
    def load_target(self, case: str) -> np.ndarray:
        """The reconstruction target ``(B, A)`` float32 in ``[0, 1]`` of ``case`` (inverted for FAF)."""
        image = PreprocessedDataset(self.data_dir).load_enface(case, self.modality).astype(np.float32)
        return 1.0 - image if self.inverted else image

    def reconstruct(self, model: nn.Module, cases: Sequence[str]) -> dict[str, np.ndarray]:
        """Whole-plane reconstructions ``{case: (B, A) float32 in [0, 1]}`` (sliding window, no TTA)."""
        predictor = Predictor([model], self.plan, self.config.config, device=self.config.device, tta=False,
                              num_outputs=1, precision=self.config.precision)
        store = PreprocessedDataset(self.data_dir)
        return {case: predictor.predict_preprocessed(store.load_volume(case))[0] for case in cases}

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """``{"val_loss", "val_ssim"}`` over the held-out cases (``{}`` without any); draws the picture."""
        val_cases = list(self.config.val_cases)
        if not val_cases:
            return {}
        recons = self.reconstruct(model, val_cases)
        scores: dict[str, float] = {}
        rows = []
        for i, case in enumerate(val_cases):
            target = self.load_target(case)
            recon = recons[case]
            with torch.no_grad():
                s = float(ssim(torch.from_numpy(recon)[None, None], torch.from_numpy(target)[None, None])[0])
            scores[case] = s
            if self.picture_dir is not None and i < self.config.n_pictures:
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
