"""Loss and augmentation parameters: plan values (``plans.json``, per configuration) a trainer may override.

Each :class:`~fpnunet.plans.plan.Configuration` holds a ``loss`` (:class:`LossParams`) and an
``augmentation`` (:class:`AugmentParams`). Their defaults are the values that used to be fixed in
code, so a ``plans.json`` written before they existed loads with exactly the old behaviour. A
trainer (``fpn_train --trainer NAME``, :data:`fpnunet.training.trainer.TRAINERS`) starts from the plan's
values and may override some (e.g. ``cmc`` sets its en-face misalignment); the resolved values
are stored in each checkpoint's ``args``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fpnunet.errors import FPNError


@dataclass
class LossParams:
    """Segmentation loss: ``(dice_weight * Dice + ce_weight * BCE) / 2`` for one foreground class
    (sigmoid), ``dice_weight * Dice + ce_weight * CE`` for several (softmax); batch soft Dice
    with ``smooth``. The ``cmc`` trainer's consistency terms are weighted by the other fields."""

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    smooth: float = 1e-5
    semantic_weight: float = 1.0
    """cmc: channel-wise semantic consistency between the OCT and en-face branches' features."""
    contrastive_weight: float = 0.5
    """cmc: contrastive consistency of the branches' prediction-weighted class prototypes."""
    agreement_weight: float = 1.0
    """cmc: coarse (pooled) agreement of each branch's prediction with the fused one."""
    temperature: float = 0.2
    """cmc: InfoNCE temperature of the contrastive term."""
    branch_weight: float = 0.5
    """cmc: weight of each branch's supervised loss (the fused output's has weight 1)."""
    consistency_rampup_epochs: int = 0
    """cmc: epochs over which the consistency weights ramp up linearly from 0 (0: full at once)."""


@dataclass
class AugmentParams:
    """Augmentation settings (probabilities are per sample)."""

    scale: tuple[float, float] = (0.85, 1.25)
    """Range of the coordinate scale factor (> 1 zooms out: the patch covers more of the case)."""
    p_scale: float = 0.2
    mirror_axes: tuple[int, ...] = (0, 1)
    """En-face axes flipped with probability 1/2 each: 0 = B, 1 = A."""
    p_brightness: float = 0.15
    brightness_sigma: float = 0.1
    """Standard deviation of the additive shift (the volume is z-scored)."""
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    """batchgenerators uses this value as the noise's standard deviation."""
    rotation_deg: float = 180.0
    """2D augmentation (``plane2d``): in-plane rotation up to this many degrees either way (nnU-Net's 2D)."""
    p_rotation: float = 0.2
    gamma_range: tuple[float, float] = (0.7, 1.5)
    """2D augmentation: gamma of each input channel (min-max rescaled, mean and std kept)."""
    p_gamma: float = 0.3
    enface_shift_px: float = 4.0
    """Trainers with en-face inputs (cmc): the en-face image alone is shifted by up to this many
    pixels on each axis, rotated and scaled (a random misalignment with the volume)."""
    enface_rotation_deg: float = 5.0
    enface_scale: tuple[float, float] = (0.95, 1.05)
    p_enface_misalign: float = 1.0

    def spatial(self) -> bool:
        return self.p_scale > 0 and tuple(self.scale) != (1.0, 1.0)


_TUPLES = {"scale", "mirror_axes", "contrast_range", "noise_variance", "enface_scale", "gamma_range"}


def params_from_dict(klass: type, d: Any, where: str) -> Any:
    """A :class:`LossParams` / :class:`AugmentParams` from its JSON dict (missing keys: defaults;
    unknown keys: an error naming them, so a typo in ``plans.json`` is not silently ignored)."""
    if d is None:
        return klass()
    if not isinstance(d, dict):
        raise FPNError(f"{where}: expected a dict of {klass.__name__} values, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise FPNError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    values = {k: tuple(v) if k in _TUPLES and isinstance(v, (list, tuple)) else v for k, v in d.items()}
    return klass(**values)


def override(params: Any, overrides: dict[str, Any], where: str) -> Any:
    """``params`` with ``overrides`` applied (unknown names are an error naming ``where``)."""
    if not overrides:
        return params
    names = {f.name for f in dataclasses.fields(params)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise FPNError(f"{where}: unknown {type(params).__name__} key(s) {unknown}")
    return dataclasses.replace(params, **{k: tuple(v) if k in _TUPLES else v for k, v in overrides.items()})
