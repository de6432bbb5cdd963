"""Training augmentation for 3D volumes with 2D (en-face) targets, on batchgenerators transforms.

batchgenerators' spatial transforms assume the label has the data's dimensionality. The volume
``(N, C, B, D, A)`` is therefore folded to ``(N, C*D, B, A)`` (depth into channels), the 2D
transforms move data and en-face maps together, and the result is unfolded back:

1. :class:`FoldDepth`: ``data (N, C, Lb, D, La) -> (N, C*D, Lb, La)``. Labels (mode ``"seg"``) and
   the validity mask go to ``seg (N, 2, Lb, La)``, interpolated nearest (order 0). A continuous
   target (FAF, SLO) and the mask instead ride as two extra *data* channels, interpolated linearly
   (batchgenerators interpolates ``seg`` channels at order > 0 label by label, which is wrong for a
   continuous image).
2. ``SpatialTransform`` (in-plane scaling in ``scale``, no rotation, no elastic deformation, centre
   crop of the loaded ``(Lb, La)`` to the patch): data linear, labels nearest, constant 0 outside.
3. ``MirrorTransform(axes=(0, 1))``: flips on B and on A, each with probability 1/2; both together
   are the 180-degree in-plane rotation (probability 1/4), so no separate rotation is needed.
4. :class:`UnfoldDepth`: back to ``data (N, C, Bp, D, Ap)``, ``target``/``mask (N, 1, Bp, Ap)``; the
   mask is re-binarised (a pixel is valid only if its whole interpolation support was).
5. intensity, on the volume only (per sample, per channel): ``BrightnessTransform`` (additive shift),
   ``ContrastAugmentationTransform``, ``GaussianNoiseTransform``.

En-face input images (``enface (N, M, Lb, La)`` of a loader asked for them) ride through steps 1-4
as extra folded data channels (:class:`StashEnface` / :class:`UnstashEnface`), so they get exactly
the volume's scaling, crop and flips (linear interpolation); ``pack=True`` finally packs them into
``data (N, C + M, Bp, D, Ap)``, constant along depth (:class:`PackEnface`), the input of a network
with :attr:`~fpnunet.networks.registry.SegNetwork.enface_inputs`.

Everything runs inside :class:`SeededCompose`, which seeds numpy's and Python's global generators
from the batch's ``aug_seed`` (batchgenerators draws from them) and restores them afterwards: the
augmentation of a batch depends on its seed only, in a worker or in the main process.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import BrightnessTransform, ContrastAugmentationTransform
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from fpnunet.plans.training_params import AugmentParams
from fpnunet.training.data import worker_error
from fpnunet.training.registry import Registry

__all__ = ["AUGMENTATIONS", "AugmentParams", "get_train_transforms", "get_val_transforms", "load_margin"]

AUGMENTATIONS: Registry = Registry("augmentation", modules={"cmc": "fpnunet.training.cmc.augment"})
"""Augmentations by name; ``cmc`` (with the en-face image's own misalignment) is imported when first asked for."""
"""Training transforms by name: ``factory(patch_size, AugmentParams, mode, enface) -> transform``
(``enface``: the batch's en-face input images move with the volume and end packed into ``data``)."""

MASK_VALID = 0.999
"""After linear interpolation a pixel stays valid only when its mask value is at least this."""


def load_margin(patch_size: Sequence[int], params: AugmentParams | None) -> tuple[int, int]:
    """Pixels to read on each side of the patch so the largest zoom-out stays on real data."""
    if params is None or not params.spatial():
        return (0, 0)
    s = max(1.0, float(params.scale[1]))
    return tuple(int(math.ceil(p * (s - 1.0) / 2.0)) + 1 if s > 1.0 else 0 for p in patch_size)  # type: ignore[return-value]


class FoldDepth(AbstractTransform):
    """``data (N, C, B, D, A) -> (N, C*D, B, A)``; target and mask into ``seg`` (nearest) or into two
    trailing data channels (``continuous=True``, linear)."""

    def __init__(self, continuous: bool) -> None:
        self.continuous = continuous

    def __call__(self, **d: Any) -> dict[str, Any]:
        data = d["data"]
        n, c, b, depth, a = data.shape
        folded = data.transpose(0, 1, 3, 2, 4).reshape(n, c * depth, b, a)
        maps = np.concatenate([d.pop("target"), d.pop("mask")], axis=1).astype(np.float32)
        if self.continuous:
            d["data"] = np.concatenate([folded, maps], axis=1)
        else:
            d["data"] = np.ascontiguousarray(folded)
            d["seg"] = maps
        d["fold_shape"] = (c, depth)
        return d


class UnfoldDepth(AbstractTransform):
    """Inverse of :class:`FoldDepth`: ``data (N, C, B, D, A)``, ``target``/``mask (N, 1, B, A)``."""

    def __init__(self, continuous: bool) -> None:
        self.continuous = continuous

    def __call__(self, **d: Any) -> dict[str, Any]:
        c, depth = d.pop("fold_shape")
        data = d["data"]
        if self.continuous:
            maps, data = data[:, c * depth:], data[:, : c * depth]
        else:
            maps = d.pop("seg")
        n, _, b, a = data.shape
        d["data"] = np.ascontiguousarray(data.reshape(n, c, depth, b, a).transpose(0, 1, 3, 2, 4))
        d["target"] = np.ascontiguousarray(maps[:, :1], dtype=np.float32)
        d["mask"] = (maps[:, 1:2] >= MASK_VALID).astype(np.float32)
        return d


class StashEnface(AbstractTransform):
    """After :class:`FoldDepth`: append ``enface (N, M, B, A)`` to the folded data channels."""

    def __call__(self, **d: Any) -> dict[str, Any]:
        enface = d.pop("enface")
        d["enface_inputs"] = enface.shape[1]
        d["data"] = np.concatenate([d["data"], enface.astype(np.float32)], axis=1)
        return d


class UnstashEnface(AbstractTransform):
    """Before :class:`UnfoldDepth`: split the en-face channels off the data again."""

    def __call__(self, **d: Any) -> dict[str, Any]:
        m = d.pop("enface_inputs")
        data = d["data"]
        d["enface"] = np.ascontiguousarray(data[:, data.shape[1] - m:], dtype=np.float32)
        d["data"] = data[:, : data.shape[1] - m]
        return d


class PackEnface(AbstractTransform):
    """``data (N, C, B, D, A)`` + ``enface (N, M, B, A)`` (popped) -> ``data (N, C + M, B, D, A)``,
    each en-face image constant along depth (as :func:`fpnunet.networks.cmc.pack_enface`)."""

    def __call__(self, **d: Any) -> dict[str, Any]:
        data, enface = d["data"], d.pop("enface")
        n, _, b, depth, a = data.shape
        planes = np.broadcast_to(enface[:, :, :, None, :].astype(np.float32), (n, enface.shape[1], b, depth, a))
        d["data"] = np.concatenate([data.astype(np.float32), planes], axis=1)
        return d


class CenterCropEnface(AbstractTransform):
    """Crop ``data (N, C, Lb, D, La)``, ``target``/``mask (N, 1, Lb, La)`` (and ``enface (N, M, Lb,
    La)``) to the central ``patch``."""

    def __init__(self, patch_size: Sequence[int]) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)

    def __call__(self, **d: Any) -> dict[str, Any]:
        lb, la = d["target"].shape[-2:]
        pb, pa = self.patch_size
        if (lb, la) == (pb, pa):
            return d
        b0, a0 = (lb - pb) // 2, (la - pa) // 2
        d["data"] = np.ascontiguousarray(d["data"][:, :, b0:b0 + pb, :, a0:a0 + pa])
        for k in ("target", "mask", "enface"):
            if k in d:
                d[k] = np.ascontiguousarray(d[k][:, :, b0:b0 + pb, a0:a0 + pa])
        return d


class Finalize(AbstractTransform):
    """Make ``data``/``target``/``mask`` contiguous float32 and drop helper keys."""

    def __call__(self, **d: Any) -> dict[str, Any]:
        for k in ("data", "target", "mask"):
            d[k] = np.ascontiguousarray(d[k], dtype=np.float32)
        d.pop("aug_seed", None)
        return d


class SeededCompose(AbstractTransform):
    """Run ``transforms`` with numpy's and Python's global generators seeded from the batch's
    ``aug_seed`` (restored afterwards). Error items from the loader pass through; an exception in a
    transform is logged here with its traceback and turned into an error item."""

    def __init__(self, transforms: Sequence[AbstractTransform]) -> None:
        self.compose = Compose(list(transforms))

    @property
    def transforms(self) -> list[AbstractTransform]:
        return self.compose.transforms

    def __call__(self, **d: Any) -> dict[str, Any]:
        if "error" in d:
            return d
        seed = d.get("aug_seed")
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            if seed is not None:
                seed = np.asarray(seed, dtype=np.uint32)
                np.random.seed(seed)
                random.seed(int.from_bytes(seed.tobytes(), "little"))
            return self.compose(**d)
        except Exception as exc:  # noqa: BLE001  reported here (the worker), re-raised in the main process
            return worker_error(exc, f"augmentation of batch {d.get('batch_index')}")
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

    def __repr__(self) -> str:
        return f"SeededCompose({self.compose.transforms!r})"


def get_train_transforms(
    patch_size: Sequence[int],
    mode: str = "seg",
    params: AugmentParams | None = None,
    *,
    spatial: bool = True,
    intensity: bool = True,
    enface: bool = False,
    after_spatial: Sequence[AbstractTransform] = (),
    pack: bool = False,
) -> SeededCompose:
    """Training transforms for batches of :class:`~fpnunet.training.data.EnfaceDataLoader`.

    ``patch_size``: en-face output patch ``(B_p, A_p)``; the loader must have read the margin of
    :func:`load_margin` around it. ``mode``: ``"seg"`` (labels, nearest) or a modality (continuous
    target, linear). ``spatial=False`` leaves out scaling and flips, ``intensity=False`` the
    intensity transforms (both on by default). Output: ``data (N, C, B_p, D, A_p)``,
    ``target``/``mask (N, 1, B_p, A_p)``, float32. ``enface``: the batch's ``enface`` images move
    with the volume; ``after_spatial``: transforms run after the spatial ones (the cmc trainer's
    misalignment); ``pack``: the en-face images end packed into ``data`` (module docstring).
    """
    p = params or AugmentParams()
    continuous = mode != "seg"
    patch = tuple(int(x) for x in patch_size)
    ts: list[AbstractTransform] = []
    if spatial:
        ts += [
            FoldDepth(continuous), *([StashEnface()] if enface else []),
            SpatialTransform(
                patch, patch_center_dist_from_border=None, do_elastic_deform=False, do_rotation=False,
                do_scale=p.spatial(), scale=tuple(p.scale), p_scale_per_sample=p.p_scale,
                border_mode_data="constant", border_cval_data=0, order_data=1,
                border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
            ),
        ]
        if p.mirror_axes:
            ts.append(MirrorTransform(tuple(p.mirror_axes)))
        ts += [*([UnstashEnface()] if enface else []), UnfoldDepth(continuous)]
    else:
        ts.append(CenterCropEnface(patch))
    ts += list(after_spatial)
    if intensity:
        if p.p_brightness > 0:
            ts.append(BrightnessTransform(0.0, p.brightness_sigma, per_channel=True, p_per_sample=p.p_brightness))
        if p.p_contrast > 0:
            ts.append(ContrastAugmentationTransform(tuple(p.contrast_range), preserve_range=True, per_channel=True,
                                                    p_per_sample=p.p_contrast))
        if p.p_noise > 0:
            ts.append(GaussianNoiseTransform(tuple(p.noise_variance), p_per_sample=p.p_noise))
    if pack:
        ts.append(PackEnface())
    ts.append(Finalize())
    return SeededCompose(ts)


def get_val_transforms(patch_size: Sequence[int] | None = None, pack: bool = False) -> SeededCompose:
    """No augmentation: centre-crop to ``patch_size`` (when given and the loader read a margin),
    pack the en-face inputs (``pack``) and finalise dtypes."""
    ts: list[AbstractTransform] = [CenterCropEnface(patch_size)] if patch_size is not None else []
    return SeededCompose([*ts, *([PackEnface()] if pack else []), Finalize()])


@AUGMENTATIONS.register("default")
def default_augmentation(patch_size: Sequence[int], params: AugmentParams | None, mode: str = "seg",
                         enface: bool = False) -> SeededCompose:
    """In-plane scaling and flips, then intensity on the volume (:func:`get_train_transforms`)."""
    return get_train_transforms(patch_size, mode, params, enface=enface, pack=enface)


@AUGMENTATIONS.register("none")
def no_augmentation(patch_size: Sequence[int], params: AugmentParams | None, mode: str = "seg",
                    enface: bool = False) -> SeededCompose:
    """Plain centre crops (:func:`get_val_transforms`)."""
    return get_val_transforms(patch_size, pack=enface)
