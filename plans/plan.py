"""The plan: the single source of truth every stage after planning reads (``plans.json``).

A :class:`Plan` holds dataset-level decisions (projection axis, normalisation, depth crop,
label map) and one :class:`Configuration` per network name (patch, batch, depth, topology,
the memory estimate behind the choice, training defaults). Replanning one configuration keeps
the others, user edits included. Everything round-trips through JSON::

    plan = Plan.load(path); plan.save(path)  # atomic

Loading checks every value a stage will act on (:func:`check_raw`, :func:`check_plan`): a bad
value is one :class:`FPNError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fpnunet.atomic import load_json, save_json
from fpnunet.cli_args import current_kwargs
from fpnunet.errors import FPNError
from fpnunet.plans.candidates import Candidate
from fpnunet.plans.training_params import AugmentParams, LossParams, params_from_dict

PLAN_VERSION = 1


@dataclass
class NetworkSpec:
    """A registered network name and its topology kwargs (``in_channels``/``num_classes`` are
    added at build time from the plan)."""

    name: str = "fpn"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryEstimate:
    """Peak training memory of one step, in bytes, and how it was obtained."""

    activation_bytes: int = 0
    parameter_bytes: int = 0
    gradient_bytes: int = 0
    optimizer_bytes: int = 0
    workspace_bytes: int = 0
    total_bytes: int = 0
    precision: str = "fp32"
    calibrated_peak_bytes: int | None = None
    calibrated_device: str | None = None

    @property
    def total_gb(self) -> float:
        return self.total_bytes / 2**30

    @property
    def margin_bytes(self) -> int:
        """The safety margin: ``workspace_bytes`` (cuDNN workspaces, allocator fragmentation over a
        run), kept apart from the estimate of the step's peak."""
        return self.workspace_bytes

    @property
    def peak_bytes(self) -> int:
        """The estimate of one step's peak (``torch.cuda.max_memory_allocated``) without the margin:
        ``total_bytes = peak_bytes + margin_bytes``."""
        return self.total_bytes - self.workspace_bytes


@dataclass
class TrainingDefaults:
    """Optimiser and schedule defaults; every one is overridable from the ``fpn_train`` CLI."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    lr_schedule: str = "poly"
    """SGD lr 0.1, momentum 0.9, weight decay 1e-4 as the FPN paper, with nnU-Net's per-epoch poly
    decay: on synthetic GA data, after 60 steps, whole-volume validation Dice 0.47 against 0.31 for
    lr 0.01 / momentum 0.9 (nesterov) and 0.18 for nnU-Net's lr 0.01 / momentum 0.99 (docs/training.md)."""
    epochs: int = 40
    iterations_per_epoch: int = 100
    foreground_oversample: float = 0.33
    val_every: int = 5
    grad_clip: float = 12.0
    bn_recalibration: int = 25
    """Training batches over which BatchNorm statistics are recomputed before each validation and
    the final checkpoint (fpnunet.training.loop): short runs with small batches otherwise
    validate with lagging running averages (one FPN fold: 0.37 -> 0.75 Dice)."""
    pretrain_epochs: int = 40
    pretrain_lr: float = 0.01


@dataclass
class Configuration:
    """One trainable configuration (keyed by name in :attr:`Plan.configurations`).

    ``patch_size`` is the en-face patch ``(B, A)``; the network sees ``(N, C, B, depth, A)``.
    """

    network: NetworkSpec = field(default_factory=NetworkSpec)
    patch_size: tuple[int, int] = (32, 256)
    batch_size: int = 2
    depth: int = 128
    data_identifier: str = "depth128"
    precision: str = "bf16"
    gpu_memory_gb: float = 8.0
    memory: MemoryEstimate | None = None
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    loss: LossParams = field(default_factory=LossParams)
    """Loss weights (plans written before these keys load with the defaults, the old fixed values)."""
    augmentation: AugmentParams = field(default_factory=AugmentParams)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Configuration:
        d = dict(d)
        network = dict(d.get("network", {}))
        d["network"] = NetworkSpec(network.get("name", "fpn"), current_kwargs(network.get("kwargs", {})))
        d["patch_size"] = tuple(int(v) for v in d.get("patch_size", (32, 256)))
        d["memory"] = MemoryEstimate(**d["memory"]) if d.get("memory") else None
        d["training"] = TrainingDefaults(**_known(TrainingDefaults, d.get("training", {})))
        d["loss"] = params_from_dict(LossParams, d.get("loss"), "plans.json configuration 'loss'")
        d["augmentation"] = params_from_dict(AugmentParams, d.get("augmentation"),
                                             "plans.json configuration 'augmentation'")
        return cls(**_known(cls, d))


@dataclass
class Plan:
    """Dataset-level decisions plus named configurations."""

    dataset_name: str
    projection_axis: int = 1
    num_input_channels: int = 1
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0, "lesion": 1})
    enface_modalities: list[str] = field(default_factory=list)
    file_ending: str = ".nii.gz"
    normalization: str = "zscore_retina"
    depth_crop: int = 0
    """Height in raw rows of the depth window kept around each case's retina band (0: all)."""
    enface_spacing: tuple[float, float] = (1.0, 1.0)
    median_shape: tuple[int, int, int] = (0, 0, 0)
    """Median raw volume shape ``(B, D, A)``."""
    configurations: dict[str, Configuration] = field(default_factory=dict)
    default_configuration: str = "fpn"
    candidates: list[Candidate] = field(default_factory=list)
    """The candidate configurations ``fpn_train_folds -c all`` trains (:mod:`fpnunet.plans.candidates`)."""
    dropped_candidates: list[str] = field(default_factory=list)
    """Candidate names the user dropped (kept out when the plan is made again)."""
    version: int = PLAN_VERSION

    # ------------------------------------------------------------------ helpers
    @property
    def num_outputs(self) -> int:
        """Network output channels: 1 (sigmoid) for one foreground class, else one per label."""
        fg = [v for v in self.labels.values() if v != 0]
        return 1 if len(fg) == 1 else len(self.labels)

    def configuration(self, name: str | None = None) -> Configuration:
        name = name or self.default_configuration
        if name not in self.configurations:
            raise FPNError(
                f"plans.json of {self.dataset_name} has no configuration {name!r}; "
                f"available: {sorted(self.configurations)} (re-run fpn_plan_and_preprocess --network {name})"
            )
        return self.configurations[name]

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise FPNError(f"plans.json of {self.dataset_name} has no candidate {name!r}; candidates: "
                       f"{[c.name for c in self.candidates] or 'none'} (fpn_plan_and_preprocess lists them)")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["configurations"] = {k: Configuration.from_dict(v) for k, v in d.get("configurations", {}).items()}
        d["enface_spacing"] = tuple(float(v) for v in d.get("enface_spacing", (1.0, 1.0)))
        d["median_shape"] = tuple(int(v) for v in d.get("median_shape", (0, 0, 0)))
        d["labels"] = {str(k): int(v) for k, v in d.get("labels", {}).items()}
        d["candidates"] = [Candidate.from_dict(c) for c in d.get("candidates", [])]
        d["dropped_candidates"] = [str(n) for n in d.get("dropped_candidates", [])]
        return cls(**_known(cls, d))

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise FPNError(f"{path}: no plan found; run fpn_plan_and_preprocess first")
        try:
            raw = load_json(path)
            check_raw(raw, str(path))
            plan = cls.from_dict(raw)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise FPNError(f"{path}: not a valid fpnunet plan ({exc})") from None
        check_plan(plan, str(path))
        return plan


def _known(klass: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys that are fields of the dataclass (forward compatibility)."""
    names = {f.name for f in dataclasses.fields(klass)}
    return {k: v for k, v in d.items() if k in names}


# ------------------------------------------------------------------ checks on load
# A plan is edited by hand (the docs invite it) and copied between sites, so every value a stage will act on
# is checked when the plan is loaded, like a command-line flag, before any folder is touched or any worker
# allocates: one FPNError naming the file, the key and what is wrong.
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


def check_plan(plan: Plan, where: str) -> None:
    """Value checks of a :class:`~fpnunet.plans.plan.Plan` (``where``: the file, for the message)."""
    values = list(plan.labels.values())
    if 0 not in values or not any(v > 0 for v in values):
        raise FPNError(f"{where}: key 'labels' must hold background 0 and at least one foreground label, "
                       f"got {plan.labels}")
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise FPNError(f"{where}: key 'labels' must map names to distinct non-negative values, got {plan.labels}")
    for name, c in plan.configurations.items():
        _check_configuration(c, f"{where}: key 'configurations.{name}")


def _check_configuration(c: Configuration, at: str) -> None:
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
