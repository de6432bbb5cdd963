"""Inference: sliding window over the en-face plane, batched flip TTA, fold ensemble, export.

::

    from fpnunet.inference import Predictor
    predictor = Predictor.from_model_folder(model_dir)        # every fold_* of a model folder
    probs = predictor.predict_preprocessed(volume)            # (C, B, depth, A) -> (K, B, A)
    probs, props = predictor.predict_raw([oct_bda])           # raw (B, D, A) channels -> (K, B, A)

Inference never imports :mod:`fpnunet.training`: a model folder is all it needs.

Names are imported lazily (:data:`_LAZY`, :mod:`fpnunet.lazy`): importing the package costs nothing heavy.
"""
from __future__ import annotations

from fpnunet.lazy import lazy_exports

_LAZY = {
    "label_values": "fpnunet.inference.export",
    "lesion_areas": "fpnunet.inference.export",
    "probabilities_to_segmentation": "fpnunet.inference.export",
    "write_probabilities": "fpnunet.inference.export",
    "write_segmentation": "fpnunet.inference.export",
    "CHECKPOINTS": "fpnunet.inference.predictor",
    "Predictor": "fpnunet.inference.predictor",
    "list_folds": "fpnunet.inference.predictor",
    "load_checkpoint": "fpnunet.inference.predictor",
    "gaussian_weights": "fpnunet.inference.sliding_window",
    "network_divisors": "fpnunet.inference.sliding_window",
    "predict_sliding_window": "fpnunet.inference.sliding_window",
    "window_starts": "fpnunet.inference.sliding_window",
    "fold_batchnorm": "fpnunet.inference.fast",
    "prepare_for_inference": "fpnunet.inference.fast",
    "WindowPlan": "fpnunet.inference.windows",
    "plan_windows": "fpnunet.inference.windows",
}
"""Public name -> module, imported on first use (:mod:`fpnunet.lazy`)."""

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
