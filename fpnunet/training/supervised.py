"""``--trainer supervised`` (the default): the configuration's network on the labelled cases.

Batches: :func:`fpnunet.training.loader.make_train_loader` (``mode="seg"``, the fold's training
cases kept by ``--label-fraction``, en-face input channels when the network takes some); loss:
the config's (``dice_ce`` unless a subclass says otherwise), restricted to the batch ``mask``;
validation: every validation case predicted *whole* (:func:`validate_volumes`,
``val_loss`` and ``val_dice``); export: the final validation with flip TTA into ``validation/``
(:func:`export_validation`). Model folder
``{config}__lf{fraction}__{tag}``.

:func:`validate_volumes` predicts every validation case *whole* with the
:class:`~fpnunet.inference.predictor.Predictor` (sliding window, no TTA) and reports ``val_loss``
(the training loss of the whole-volume probabilities) and ``val_dice`` (mean over cases of the mean
foreground-class Dice), never a patch "pseudo Dice". :func:`export_validation` predicts the
validation cases with TTA, writes their masks on each case's raw en-face geometry into
``validation/`` in the dataset's file ending, and evaluates them into ``validation/summary.json``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fpnunet import distributed as fdist
from fpnunet.evaluation.evaluate import evaluate_folders, summarize, write_summary
from fpnunet.evaluation.metrics import case_metrics, dice
from fpnunet.inference.export import (
    label_values,
    probabilities_to_segmentation,
    write_probabilities,
    write_segmentation,
)
from fpnunet.inference.predictor import Predictor
from fpnunet.io import EnfaceGeometry, resample_to_shape
from fpnunet.networks.registry import enface_inputs, network_class
from fpnunet.plans.plan import Plan
from fpnunet.prediction_folder import PredictionFolder
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.raw_dataset import label_name
from fpnunet.raw_dataset import labels_dir as raw_labels_dir
from fpnunet.results_layout import VALIDATION_DIR
from fpnunet.training.enface_inputs import missing_message
from fpnunet.training.loader import make_train_loader
from fpnunet.training.losses import SegmentationLoss, logits_from_probabilities
from fpnunet.training.run_config import RunConfig
from fpnunet.training.trainer import BatchSource, Trainer, register_trainer


@register_trainer("supervised")
class SupervisedTrainer(Trainer):
    """Supervised en-face segmentation (see the module docstring)."""

    metric_columns = ("val_loss", "val_dice")
    score_column = "val_dice"
    distributed_validation = True

    def __init__(self, config: RunConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self._lut = channel_lut(plan.labels, plan.num_outputs)
        self._identity = bool(torch.equal(self._lut, torch.arange(len(self._lut))))

    def train_batches(self, epoch: int) -> BatchSource:
        c = self.config
        return make_train_loader(
            self.data_dir, list(c.train_cases), self.configuration, mode="seg", batch_size=c.batch_size, seed=c.seed,
            epoch=epoch, num_workers=c.num_workers, oversample=c.foreground_oversample,
            pin_memory=c.device.startswith("cuda"), params=c.augment_params, augmentation=c.augmentation,
            enface=list(c.enface_inputs), slabs=network_class(c.network).training_slabs(**c.network_kwargs),
        )

    def channels(self, target: torch.Tensor) -> torch.Tensor:
        """Label values -> output channel indices (unchanged when they are the same)."""
        if self._identity:
            return target
        lut = self._lut.to(target.device)
        return lut[target.long().clamp(0, len(lut) - 1)]

    def loss(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_fn(output, self.channels(batch["target"]), batch.get("mask"))

    def validation_loss(self) -> nn.Module:
        """The loss ``val_loss`` reports (of whole-volume probabilities)."""
        return self.loss_fn

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        return validate_volumes(model, self.plan, self.config.config, self.data_dir, list(self.config.val_cases),
                                device=self.config.device, tta=False, loss_fn=self.validation_loss(),
                                precision=self.config.precision)  # validated as trained, whatever the CPU

    def header(self) -> str:
        c = self.config
        unlabelled = f", {len(c.unlabelled_cases)} unlabelled" if self.uses_unlabelled else ""
        return (f"{c.dataset} / {c.config} / {self.fold_dir.name}: {len(c.train_cases)} training cases "
                f"(label fraction {c.label_fraction:g}){unlabelled}, {len(c.val_cases)} validation cases, "
                f"trainer {c.trainer}")

    def export(self, model: nn.Module, checkpoint: str, epoch: int, best_score: float | None) -> dict[str, Any] | None:
        """The final validation: flip TTA, masks on the raw geometry, ``validation/summary.json``."""
        c = self.config
        if not c.val_cases:
            print("no validation cases in this fold: final validation skipped")
            return None
        out = self.fold_dir / VALIDATION_DIR
        summary = export_validation(model, self.plan, c.config, self.data_dir, list(c.val_cases), out,
                                    None if c.raw_dir is None else Path(c.raw_dir), device=c.device, tta=True,
                                    extra={"checkpoint": checkpoint, "epoch": epoch, "tta": True},
                                    progress=c.progress, precision=c.precision,
                                    save_probabilities=c.save_probabilities)
        dice = summary["foreground_mean"]["Dice"]
        print(f"final validation ({checkpoint}, {len(c.val_cases)} cases): mean Dice {dice:.4f} (flip TTA) "
              f"-> {out / 'summary.json'}")
        return summary


# ----------------------------------------------------------------------------- validation and export
# ----------------------------------------------------------------------------- preprocessed cases
def labelled_cases(data_dir: str | Path, hint: str | None = None) -> list[str]:
    """Labelled cases of a complete preprocessed ``data_identifier`` folder
    (:meth:`fpnunet.preprocessed_dataset.PreprocessedDataset.open`; an incomplete one is refused)."""
    return PreprocessedDataset.open(data_dir, hint).labelled


def load_volume(data_dir: Path, case: str) -> np.ndarray:
    """The preprocessed volume ``(C, B, depth, A)`` float32."""
    return PreprocessedDataset(data_dir).load_volume(case)


def load_label(data_dir: Path, case: str) -> np.ndarray:
    """The preprocessed label map ``(B, A)``."""
    return PreprocessedDataset(data_dir).load_label(case)


def load_enface_inputs(data_dir: Path, case: str, modalities: list[str]) -> np.ndarray:
    """The preprocessed en-face images ``(M, B, A)`` a network takes as input channels; a missing
    one is an :class:`FPNError` naming the case."""
    store = PreprocessedDataset(data_dir)
    images = [store.load_enface(case, mod, missing_message(store.enface_file(case, mod), case, mod, modalities))
              for mod in modalities]
    return np.stack(images).astype(np.float32)


def predict_case(predictor: Predictor, data_dir: Path, case: str, modalities: list[str]) -> np.ndarray:
    """Probabilities ``(K, B, A)`` of a preprocessed case, with its en-face inputs when the network takes some."""
    volume = load_volume(data_dir, case)
    if not modalities:
        return predictor.predict_preprocessed(volume)
    from fpnunet.inference.fused import predict_fused  # lazy: start-up time (only models with en-face inputs)

    return predict_fused(predictor, volume, load_enface_inputs(data_dir, case, modalities))


def channel_lut(labels: dict[str, int], num_outputs: int) -> torch.Tensor:
    """Tensor mapping a label value to its output channel index (``K == 1``: foreground -> 1)."""
    values = label_values(labels, num_outputs)
    lut = torch.zeros(max(values) + 1, dtype=torch.long)
    for index, value in enumerate(values):
        lut[value] = index
    return lut


# ----------------------------------------------------------------------------- whole-volume metrics
def mean_foreground_dice(ref: np.ndarray, pred: np.ndarray, labels: dict[str, int]) -> float:
    """Mean over foreground classes of Dice (both empty: 1) of two label maps ``(B, A)``."""
    values = sorted({int(v) for v in labels.values() if int(v) != 0})
    return float(np.mean([dice(ref == v, pred == v) for v in values]))


def validate_volumes(
    model: nn.Module,
    plan: Plan,
    config_name: str,
    data_dir: Path,
    cases: Sequence[str],
    device: str = "cpu",
    tta: bool = False,
    loss_fn: SegmentationLoss | None = None,
    progress: bool = False,
    precision: str | None = None,
) -> dict[str, float]:
    """``{"val_loss", "val_dice"}``: means over ``cases`` of the whole-volume loss and Dice.

    ``precision`` (``bf16``/``fp32``) pins the forward's precision; ``None``: the predictor's
    ``auto`` (on the CPU :func:`fpnunet.precision.cpu_bf16_decision`).

    Each preprocessed volume (with its en-face images when the model takes some,
    :func:`~fpnunet.networks.registry.enface_inputs`) is predicted whole (sliding window) and
    compared with its preprocessed label map; ``{}`` when ``cases`` is empty. Under distributed training every rank
    predicts its share of the cases (:func:`fpnunet.distributed.shard`) and the per-case values
    are gathered in case order, so every rank returns what one process would.
    """
    if not cases:
        return {}
    loss_fn = loss_fn or SegmentationLoss(plan.num_outputs)
    lut = channel_lut(plan.labels, plan.num_outputs)
    predictor = Predictor([model], plan, config_name, device=device, tta=tta, precision=precision or "auto")
    modalities = enface_inputs(model)
    mine: dict[int, tuple[float, float]] = {}
    for i in tqdm(fdist.shard(len(cases)), desc="validation", unit="case", leave=False, disable=not progress):
        case = cases[i]
        probs = predict_case(predictor, data_dir, case, modalities)
        ref = load_label(data_dir, case)
        target = lut[torch.from_numpy(ref.astype(np.int64))][None, None]
        with torch.no_grad():
            logits = logits_from_probabilities(torch.from_numpy(probs)[None])
            loss = float(loss_fn(logits, target))
        mine[i] = (loss, mean_foreground_dice(ref, probabilities_to_segmentation(probs, labels=plan.labels),
                                              plan.labels))
    values = fdist.gather_indexed(len(cases), mine)
    return {"val_loss": float(np.mean([v[0] for v in values])), "val_dice": float(np.mean([v[1] for v in values]))}


# ----------------------------------------------------------------------------- final validation
def export_validation(
    model: nn.Module,
    plan: Plan,
    config_name: str,
    data_dir: Path,
    cases: Sequence[str],
    out_dir: Path,
    raw_dir: Path | None = None,
    device: str = "cpu",
    tta: bool = True,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    precision: str | None = None,
    save_probabilities: bool = False,
) -> dict[str, Any]:
    """Predict ``cases`` whole (with flip TTA), write ``out_dir/CASE<file_ending>`` on each case's
    raw en-face geometry, and write ``out_dir/summary.json`` (+ per-case CSV); returns the summary.

    References are the raw ``labelsTr`` files when all are present (so the figures are those
    ``fpn_evaluate`` gives), else the preprocessed label maps on the same geometry.
    ``extra`` entries (checkpoint name, epoch, TTA) are added to the summary; ``progress=False``
    hides the per-case bar; ``precision`` pins the forward's precision as in :func:`validate_volumes`;
    ``save_probabilities`` also writes ``out_dir/CASE.npz`` (the out-of-fold probabilities
    ``fpn_find_best_configuration`` reads), on the same grid as the mask; otherwise stale ones are removed.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ending = plan.file_ending
    folder = PredictionFolder(out_dir)
    folder.remove_masks_except(cases, ending)
    folder.remove_probabilities_except(cases if save_probabilities else [])
    predictor = Predictor([model], plan, config_name, device=device, tta=tta,
                          precision=precision or "auto")
    modalities = enface_inputs(model)
    geometries: dict[str, EnfaceGeometry] = {}
    predictions: dict[str, np.ndarray] = {}
    for case in tqdm(cases, desc="final validation", unit="case", disable=not progress):
        probs = predict_case(predictor, data_dir, case, modalities)
        seg = predictions[case] = probabilities_to_segmentation(probs, labels=plan.labels)
        geometry = PreprocessedDataset(data_dir).geometry(case)
        if tuple(seg.shape) != tuple(geometry.shape):
            seg = resample_to_shape(seg, tuple(geometry.shape), is_label=True)
            probs = np.stack([resample_to_shape(p, tuple(geometry.shape), is_label=False) for p in probs])
        write_segmentation(seg, geometry, folder.mask_file(case, ending))
        if save_probabilities:
            write_probabilities(probs, folder.probabilities_file(case), labels=plan.labels)
        geometries[case] = geometry
    summary_file = out_dir / "summary.json"
    labels_dir = raw_labels_dir(raw_dir, "Tr") if raw_dir is not None else None
    if labels_dir is not None and all((labels_dir / label_name(c, ending)).is_file() for c in cases):
        summary = evaluate_folders(labels_dir, out_dir, labels=plan.labels, file_ending=ending,
                                   output_file=summary_file, cases=cases, write=False)
    else:
        entries = []
        for case in cases:
            metrics = case_metrics(load_label(data_dir, case), predictions[case], geometries[case].spacing,
                                   plan.labels)
            entries.append({"case": case, "reference_file": str(PreprocessedDataset(data_dir).label_file(case)),
                            "prediction_file": str(folder.mask_file(case, ending)), "metrics": metrics})
        summary = summarize(entries, plan.labels)
    summary.update(extra or {})
    write_summary(summary, summary_file)
    return summary
