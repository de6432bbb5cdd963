"""Fused prediction (``fpn_predict --fused``): OCT volume + en-face images through a model trained
with en-face inputs (``--trainer cmc``, or a network with en-face input channels such as
``omnia`` trained with ``--enface-inputs``, for which ``fpn_predict`` always reads them).

The model folder's networks say which en-face modalities they take (``modalities`` of a cmc model,
``enface_inputs`` of a network that needs them, from the checkpoints). For each case
``CASE`` the images ``ENFACE_DIR/CASE_MOD<ending>`` (any
ending SimpleITK reads; ``ENFACE_DIR`` defaults to ``enfaceTs`` beside the input folder) are read,
resampled onto the volume's en-face grid and scaled to [0, 1] exactly as preprocessing does, and
packed as extra channels constant along depth (:func:`fpnunet.networks.cmc.pack_enface`), so the
sliding window, padding and flip TTA treat them with the volume. Every case's files are checked
before anything is predicted: a missing one is a one-line :class:`FPNError` naming the case.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fpnunet.errors import FPNError
from fpnunet.io import read_image, squeeze_2d
from fpnunet.preprocessing.preprocess import resample_enface, scale_enface
from fpnunet.raw_dataset import enface_stem, image_files

from .predictor import Predictor


def model_modalities(predictor: Predictor) -> list[str]:
    """The en-face modalities every network of ``predictor`` takes; an error when it takes none."""
    if predictor.enface_inputs:
        return list(predictor.enface_inputs)
    found = {tuple(getattr(net, "modalities", None) or ()) for net in predictor.networks}
    where = predictor.model_dir or "this model"
    if found == {()}:
        raise FPNError(f"{where}: --fused needs a model trained with en-face inputs (fpn_train --trainer cmc); "
                       "this one takes the OCT volume only")
    if len(found) != 1 or () in found:
        raise FPNError(f"{where}: its folds take different en-face modalities {sorted(found)}")
    return list(found.pop())


def find_enface_files(enface_dir: Path, case: str, modalities: list[str], need: str = "which --fused needs"
                      ) -> dict[str, Path]:
    """``{modality: path}`` of ``case``; :class:`FPNError` naming the case and the first missing image
    (``need`` says why it is needed)."""
    out: dict[str, Path] = {}
    for mod in modalities:
        hits = image_files(enface_dir, enface_stem(case, mod))
        if not hits:
            raise FPNError(f"{enface_dir / f'{case}_{mod}'}.*: case {case!r} has no {mod} image, {need} "
                           f"(the model takes {', '.join(modalities)}; images elsewhere: --enface-dir)")
        out[mod] = hits[0]
    return out


def read_enface(files: dict[str, Path], modalities: list[str], grid: tuple[int, int]) -> np.ndarray:
    """``(M, B, A)`` float32 in [0, 1]: each image resampled onto ``grid`` and scaled as preprocessing does."""
    images = []
    for mod in modalities:
        path = files[mod]
        arr = squeeze_2d(read_image(path).array)
        if arr.ndim != 2:
            raise FPNError(f"{path}: en-face image ({mod}) must be 2D, got shape {arr.shape}")
        images.append(scale_enface(resample_enface(arr, grid, is_label=False)))
    return np.stack(images).astype(np.float32)


def predict_fused(predictor: Predictor, volume: np.ndarray, enface: np.ndarray, members: bool = False) -> np.ndarray:
    """Probabilities ``(K, B, A)`` of a preprocessed volume ``(C, B, depth, A)`` with en-face images ``(M, B, A)``
    (``members``: ``(folds, flips, K, B, A)``, :meth:`Predictor.predict_tensor`)."""
    c, b, depth, a = volume.shape
    if enface.ndim != 3 or enface.shape[1:] != (b, a):
        raise FPNError(f"en-face images {enface.shape} are not on the volume's en-face grid {(b, a)}")
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    enf = torch.from_numpy(np.ascontiguousarray(enface, dtype=np.float32))
    packed = torch.cat([vol, enf[:, :, None, :].expand(enf.shape[0], b, depth, a)], dim=0)
    return predictor.predict_tensor(packed, members).cpu().numpy()
