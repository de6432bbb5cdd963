"""The stable Python API: load a model (a model folder or a package ``.zip``), predict, read results.

::

    from fpnunet.inference.api import load_model

    model = load_model("model.zip")                     # or a model folder; device="cpu", tta=False, ...
    result = model.predict_file("scan_0000.nii.gz")     # any 3D image SimpleITK reads
    result = model.predict(volume_bda, spacing=(0.12, 0.0039, 0.0113))   # numpy (B, D, A), mm
    result.mask            # (B, A) label map (the dataset's label values)
    result.probabilities   # (K, B, A) float32
    result.areas           # {"GA": 3.21} mm^2 per foreground class
    result.lesions         # per class: area_mm2, sqrt_area_mm, lesions, focality
    result.qc              # mean_confidence, uncertain_fraction, warnings (the model card's)

These names and fields are kept across versions (docs/inference.md). A file is read, preprocessed
and predicted exactly as ``fpn_predict`` does it, so the same input gives the same bytes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fpnunet.errors import FPNError, ShapeError
from fpnunet.model_card import CardCheck
from fpnunet.model_package import install_package, read_card

from .export import lesion_areas, probabilities_to_segmentation
from .inputs import InputCase, load_case
from .predictor import Predictor

__all__ = ["Model", "Prediction", "load_model", "UNCERTAIN_BELOW"]

UNCERTAIN_BELOW = 0.75
"""A pixel counts as uncertain when its winning class has a probability below this."""


@dataclass(frozen=True)
class Prediction:
    """One volume's result on its en-face plane ``(B, A)``."""

    mask: np.ndarray
    probabilities: np.ndarray
    spacing: tuple[float, float]
    areas: dict[str, float]
    lesions: dict[str, dict[str, float]]
    qc: dict[str, Any] = field(default_factory=dict)


def quality(probabilities: np.ndarray) -> dict[str, float]:
    """``mean_confidence`` (mean winning-class probability) and ``uncertain_fraction`` (share of pixels
    whose winning class is below :data:`UNCERTAIN_BELOW`) of probabilities ``(K, B, A)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    win = np.maximum(p[0], 1 - p[0]) if p.shape[0] == 1 else p.max(axis=0)
    return {"mean_confidence": float(win.mean()), "uncertain_fraction": float((win < UNCERTAIN_BELOW).mean())}


class Model:
    """A loaded model: its :class:`Predictor`, labels and model card (``None`` for a folder trained here)."""

    def __init__(self, predictor: Predictor, threshold: float = 0.5) -> None:
        if not 0 < threshold < 1:
            raise FPNError(f"threshold {threshold}: must be strictly between 0 and 1")
        self.predictor = predictor
        self.threshold = threshold
        info = predictor.dataset_info
        self.labels: dict[str, int] = dict(info.labels if info else predictor.plan.labels)
        self.card: dict[str, Any] | None = read_card(predictor.model_dir) if predictor.model_dir else None
        self._check = CardCheck(self.card) if self.card is not None else None

    def _result(self, probs: np.ndarray, spacing: tuple[float, float], where: str) -> Prediction:
        from fpnunet.inference.export import lesion_stats  # lazy: start-up time

        mask = probabilities_to_segmentation(probs, threshold=self.threshold, labels=self.labels)
        qc: dict[str, Any] = quality(probs)
        qc["warnings"] = self._check.check(where, spacing) if self._check is not None else []
        stats = {k: v.to_dict() for k, v in lesion_stats(mask, spacing, self.labels).items()}
        return Prediction(mask, probs, spacing, lesion_areas(mask, spacing, self.labels), stats, qc)

    def predict(self, volume: np.ndarray | list[np.ndarray], spacing: tuple[float, float, float]) -> Prediction:
        """Predict raw channels in numpy order ``(B, D, A)`` (one array, or one per input channel) with
        their spacing ``(sB, sD, sA)`` in mm (the areas use ``sB`` and ``sA``)."""
        channels = [np.asarray(v) for v in (volume if isinstance(volume, (list, tuple)) else [volume])]
        if len(spacing) != 3:
            raise ShapeError(f"spacing {spacing}: expected (sB, sD, sA) in mm")
        probs, _ = self.predictor.predict_raw(channels)
        return self._result(probs, (float(spacing[0]), float(spacing[2])), "volume")

    def predict_file(self, *paths: str | os.PathLike) -> Prediction:
        """Predict an image file (one per input channel) read and preprocessed as ``fpn_predict`` does."""
        if not paths:
            raise FPNError("predict_file needs the volume's file (one per input channel)")
        files = [Path(p) for p in paths]
        for f in files:
            if not f.is_file():
                raise FPNError(f"{f}: file not found")
        loaded = load_case(InputCase(files[0].name, {k: [f] for k, f in enumerate(files)}), self.predictor,
                           files[0].parent)
        if loaded.error is not None:
            raise FPNError(loaded.error)
        probs = self.predictor.predict_preprocessed(loaded.volume)
        return self._result(probs, tuple(loaded.geometry.spacing), str(files[0]))


def load_model(path: str | os.PathLike, device: str = "auto", folds: list[int | str] | None = None,
               checkpoint: str = "final", tta: bool = True, threshold: float = 0.5, **kwargs: Any) -> Model:
    """A model folder, or a package ``.zip`` (checked and installed into a temporary folder that lives
    as long as the :class:`Model`). ``kwargs`` go to :meth:`Predictor.from_model_folder`."""
    path = Path(path)
    scratch: Path | None = None
    if path.suffix == ".zip":
        scratch = Path(tempfile.mkdtemp(prefix="fpnunet-model-"))
        try:
            model_dir = install_package(path, scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    else:
        model_dir = path
    predictor = Predictor.from_model_folder(model_dir, folds=folds, checkpoint=checkpoint, device=device, tta=tta,
                                            **kwargs)
    model = Model(predictor, threshold)
    if scratch is not None:
        weakref.finalize(model, shutil.rmtree, scratch, True)
    return model
