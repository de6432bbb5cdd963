"""Augmentation of cmc batches: the volume and the en-face images move together through the usual
spatial transforms (scaling, flips; :mod:`fpnunet.training.augment`), then the en-face images alone
get a random misalignment (shift, rotation, scale: ``AugmentParams.enface_*``), so the model learns
not to rely on perfect registration. The label is moved with the same misalignment into
``enface_target``/``enface_mask`` (the en-face branch's supervision); ``target``/``mask`` stay on
the volume's grid. Intensity transforms touch the volume only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy.ndimage import affine_transform

from fpnunet.plans.training_params import AugmentParams
from fpnunet.training.augment import AUGMENTATIONS, MASK_VALID, SeededCompose, get_train_transforms


def misalignment_matrix(shift: tuple[float, float], angle_deg: float, scale: float,
                        shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` for :func:`scipy.ndimage.affine_transform` that moves an image by
    ``shift`` pixels, rotates it by ``angle_deg`` and scales it by ``scale`` about its centre."""
    t = math.radians(angle_deg)
    forward = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    inverse = np.linalg.inv(forward)
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    offset = centre - inverse @ (centre + np.asarray(shift, dtype=np.float64))
    return inverse, offset


def shift_image(image: np.ndarray, shift: tuple[float, float], order: int = 1) -> np.ndarray:
    """``image (..., B, A)`` moved by ``shift = (dB, dA)`` pixels (0 enters at the border)."""
    flat = image.reshape(-1, *image.shape[-2:])
    matrix, offset = misalignment_matrix(shift, 0.0, 1.0, image.shape[-2:])
    out = np.stack([affine_transform(ch, matrix, offset, order=order, cval=0.0) for ch in flat])
    return out.reshape(image.shape).astype(image.dtype)


class MisalignEnface(AbstractTransform):
    """Per sample (probability ``p_enface_misalign``): shift in ``[-s, s]`` pixels per axis, rotation
    in ``[-r, r]`` degrees, scale in ``enface_scale``, applied to ``enface`` (linear) and, into
    ``enface_target``/``enface_mask``, to the label and mask (nearest)."""

    def __init__(self, params: AugmentParams) -> None:
        self.p = params

    def __call__(self, **d: Any) -> dict[str, Any]:
        p = self.p
        enface, target, mask = d["enface"], d["target"], d["mask"]
        e_target, e_mask = target.copy(), mask.copy()
        for j in range(enface.shape[0]):
            if np.random.uniform() >= p.p_enface_misalign:
                continue
            shift = tuple(np.random.uniform(-p.enface_shift_px, p.enface_shift_px, 2))
            angle = np.random.uniform(-p.enface_rotation_deg, p.enface_rotation_deg)
            scale = np.random.uniform(*p.enface_scale)
            matrix, offset = misalignment_matrix(shift, angle, scale, enface.shape[-2:])  # type: ignore[arg-type]
            for m in range(enface.shape[1]):
                enface[j, m] = affine_transform(enface[j, m], matrix, offset, order=1, cval=0.0)
            e_target[j, 0] = affine_transform(target[j, 0], matrix, offset, order=0, cval=0.0)
            e_mask[j, 0] = affine_transform(mask[j, 0], matrix, offset, order=0, cval=0.0)
        d["enface"] = enface
        d["enface_target"] = e_target
        d["enface_mask"] = (e_mask >= MASK_VALID).astype(np.float32)
        return d


@AUGMENTATIONS.register("cmc")
def get_cmc_transforms(patch_size: Sequence[int], params: AugmentParams, mode: str = "seg",
                       enface: bool = True) -> SeededCompose:
    """Training transforms for :class:`~fpnunet.training.cmc.data.CMCDataLoader` batches: the
    shared spatial transforms with the en-face images, their misalignment, intensity on the volume,
    then the (misaligned) en-face images packed into ``data`` as extra channels constant along depth,
    so the generic loop's ``model(batch["data"])`` and BatchNorm recalibration see both modalities."""
    return get_train_transforms(patch_size, "seg", params, enface=True, after_spatial=[MisalignEnface(params)],
                                pack=True)
