"""Checks of a loaded ``plans.json``: its values are validated like command-line flags.

A plan is edited by hand (the docs invite it) and copied between sites, so every value a stage
will act on is checked when the plan is loaded, before any folder is touched or any worker
allocates: one :class:`FPNError` naming the file, the key and what is wrong.
"""
from __future__ import annotations

import math
from typing import Any

from fpnunet.errors import FPNError

MAX_PATCH_SIDE = 4096
"""Largest en-face patch side accepted from a plan (the planner's patches are a few hundred)."""
MAX_PATCH_PIXELS = 2048 * 2048
"""Largest en-face patch area accepted from a plan; beyond it one training sample alone needs
gigabytes per depth row, so the plan is refused before a worker allocates it."""
MAX_DEPTH = 4096
MAX_BATCH = 4096


def check_raw(d: Any, where: str) -> None:
    """Structural checks of the JSON before it is turned into dataclasses."""
    if not isinstance(d, dict):
        raise FPNError(f"{where}: not a valid fpnunet plan (expected a JSON object)")
    configurations = d.get("configurations", {})
    if not isinstance(configurations, dict):  # empty is allowed: Plan.configuration(name) names what is missing
        raise FPNError(f"{where}: key 'configurations' must be an object of named configurations, "
                       f"got {configurations!r:.60}; rerun fpn_plan_and_preprocess")
    for name, c in configurations.items():
        if not isinstance(c, dict):
            raise FPNError(f"{where}: key 'configurations.{name}' must be an object, got {type(c).__name__}")
    labels = d.get("labels", {})
    if not isinstance(labels, dict):
        raise FPNError(f"{where}: key 'labels' must be an object of name -> value, got {type(labels).__name__}")


def check_plan(plan: Any, where: str) -> None:
    """Value checks of a :class:`~fpnunet.plans.plan.Plan` (``where``: the file, for the message)."""
    values = list(plan.labels.values())
    if 0 not in values or not any(v > 0 for v in values):
        raise FPNError(f"{where}: key 'labels' must hold background 0 and at least one foreground label, "
                       f"got {plan.labels}")
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise FPNError(f"{where}: key 'labels' must map names to distinct non-negative values, got {plan.labels}")
    for name, c in plan.configurations.items():
        _check_configuration(c, f"{where}: key 'configurations.{name}")


def _check_configuration(c: Any, at: str) -> None:
    patch = tuple(c.patch_size)
    if len(patch) != 2 or any(not 1 <= p <= MAX_PATCH_SIDE for p in patch) or patch[0] * patch[1] > MAX_PATCH_PIXELS:
        raise FPNError(f"{at}.patch_size' = {list(patch)}: must be two sides in 1..{MAX_PATCH_SIDE} with at most "
                       f"{MAX_PATCH_PIXELS} pixels (rerun fpn_plan_and_preprocess to plan one that fits)")
    _whole(c.depth, 1, MAX_DEPTH, f"{at}.depth'")
    _whole(c.batch_size, 1, MAX_BATCH, f"{at}.batch_size'")
    t = c.training
    _number(t.lr, f"{at}.training.lr'", low=0.0, low_open=True)
    _number(t.pretrain_lr, f"{at}.training.pretrain_lr'", low=0.0, low_open=True)
    _number(t.momentum, f"{at}.training.momentum'", low=0.0, high=1.0, high_open=True)
    _number(t.weight_decay, f"{at}.training.weight_decay'", low=0.0)
    _number(t.foreground_oversample, f"{at}.training.foreground_oversample'", low=0.0, high=1.0)
    _number(t.grad_clip, f"{at}.training.grad_clip'", low=0.0, low_open=True)
    _whole(t.epochs, 1, None, f"{at}.training.epochs'")
    _whole(t.pretrain_epochs, 1, None, f"{at}.training.pretrain_epochs'")
    _whole(t.iterations_per_epoch, 1, None, f"{at}.training.iterations_per_epoch'")
    _whole(t.val_every, 0, None, f"{at}.training.val_every'")
    _whole(t.bn_recalibration, 0, None, f"{at}.training.bn_recalibration'")
    a = c.augmentation
    _range(a.scale, f"{at}.augmentation.scale'", low=0.0, low_open=True)
    _range(a.contrast_range, f"{at}.augmentation.contrast_range'", low=0.0, low_open=True)
    _range(a.noise_variance, f"{at}.augmentation.noise_variance'", low=0.0)
    _range(a.enface_scale, f"{at}.augmentation.enface_scale'", low=0.0, low_open=True)
    for key in ("p_scale", "p_brightness", "p_contrast", "p_noise", "p_enface_misalign"):
        _number(getattr(a, key), f"{at}.augmentation.{key}'", low=0.0, high=1.0)
    for key in ("brightness_sigma", "enface_shift_px", "enface_rotation_deg"):
        _number(getattr(a, key), f"{at}.augmentation.{key}'", low=0.0)
    if not set(a.mirror_axes) <= {0, 1}:
        raise FPNError(f"{at}.augmentation.mirror_axes' = {list(a.mirror_axes)}: en-face axes are 0 and 1")
    loss = c.loss
    for key in ("dice_weight", "ce_weight", "semantic_weight", "contrastive_weight", "agreement_weight",
                "branch_weight"):
        _number(getattr(loss, key), f"{at}.loss.{key}'", low=0.0)
    _number(loss.smooth, f"{at}.loss.smooth'", low=0.0)
    _number(loss.temperature, f"{at}.loss.temperature'", low=0.0, low_open=True)
    _whole(loss.consistency_rampup_epochs, 0, None, f"{at}.loss.consistency_rampup_epochs'")


def _number(value: Any, at: str, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise FPNError(f"{at} = {value!r}: must be a finite number in {interval}")


def _whole(value: Any, low: int, high: int | None, at: str) -> None:
    if (not isinstance(value, int) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        raise FPNError(f"{at} = {value!r}: must be a whole number in {low}..{high if high else 'inf'}")


def _range(pair: Any, at: str, low: float, low_open: bool = False) -> None:
    values = list(pair) if isinstance(pair, (list, tuple)) else [pair]
    if len(values) != 2:
        raise FPNError(f"{at} = {values!r}: must be a pair [low, high]")
    for v in values:
        _number(v, at, low=low, low_open=low_open)
    if values[0] > values[1]:
        raise FPNError(f"{at} = {values!r}: low must not exceed high")
