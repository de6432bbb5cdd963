"""``plane2d`` augmentation: nnU-Net's 2D recipe for the en-face plane, for networks that see the
volume through a few projections (``plane2d``) and take the en-face images as inputs.

Batches come from :class:`~fpnunet.training.data.EnfaceDataLoader` as usual (with ``slabs``,
``data`` holds ``S`` depth-slab means, so folding depth into channels is cheap). Steps:

1. spatial, on the volume, the en-face inputs, the target and the mask together (depth folded into
   channels, as :mod:`fpnunet.training.augment` does): in-plane rotation up to ``rotation_deg``
   (probability ``p_rotation``), scaling in ``scale`` (``p_scale``), flips on each en-face axis;
   data linear, labels nearest, 0 outside (the ``mask`` marks it, the loss ignores it);
2. the en-face images packed into ``data`` (``N, C + M, B, S, A``);
3. intensity, per sample and per input channel, the en-face images included: gamma in
   ``gamma_range`` (``p_gamma``; mean and standard deviation kept), Gaussian noise (``p_noise``).

No brightness shift or contrast scale: ``plane2d`` z-scores each input channel per sample, which
undoes both exactly.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from batchgenerators.transforms.abstract_transforms import AbstractTransform
from batchgenerators.transforms.color_transforms import GammaTransform
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from fpnunet.plans.training_params import AugmentParams
from fpnunet.training.augment import (
    AUGMENTATIONS,
    Finalize,
    FoldDepth,
    PackEnface,
    SeededCompose,
    StashEnface,
    UnfoldDepth,
    UnstashEnface,
)


@AUGMENTATIONS.register("plane2d")
def plane2d_augmentation(patch_size: Sequence[int], params: AugmentParams | None, mode: str = "seg",
                         enface: bool = False) -> SeededCompose:
    """The transform of the module docstring (``enface``: the batch's en-face inputs ride along
    and end packed into ``data``)."""
    p = params or AugmentParams()
    continuous = mode != "seg"
    patch = tuple(int(x) for x in patch_size)
    angle = math.radians(float(p.rotation_deg))
    ts: list[AbstractTransform] = [
        FoldDepth(continuous), *([StashEnface()] if enface else []),
        SpatialTransform(
            patch, patch_center_dist_from_border=None, do_elastic_deform=False,
            do_rotation=p.p_rotation > 0 and angle > 0, angle_x=(-angle, angle), p_rot_per_sample=p.p_rotation,
            do_scale=p.spatial(), scale=tuple(p.scale), p_scale_per_sample=p.p_scale,
            border_mode_data="constant", border_cval_data=0, order_data=1,
            border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
        ),
    ]
    if p.mirror_axes:
        ts.append(MirrorTransform(tuple(p.mirror_axes)))
    ts += [*([UnstashEnface()] if enface else []), UnfoldDepth(continuous), *([PackEnface()] if enface else [])]
    if p.p_gamma > 0:
        ts.append(GammaTransform(tuple(p.gamma_range), invert_image=False, per_channel=True, retain_stats=True,
                                 p_per_sample=p.p_gamma))
    if p.p_noise > 0:
        ts.append(GaussianNoiseTransform(tuple(p.noise_variance), p_per_sample=p.p_noise))
    ts.append(Finalize())
    return SeededCompose(ts)
