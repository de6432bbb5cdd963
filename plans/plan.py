"""The plan: the single source of truth every stage after planning reads (``plans.json``).

A :class:`Plan` holds dataset-level decisions (projection axis, normalisation, depth crop,
label map) and one :class:`Configuration` per network name (patch, batch, depth, topology,
the memory estimate behind the choice, training defaults). Replanning one configuration keeps
the others, user edits included. Everything round-trips through JSON::

    plan = Plan.load(path); plan.save(path)  # atomic
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fpnunet.atomic import load_json, save_json
from fpnunet.cli_args import current_kwargs
from fpnunet.errors import FPNError
from fpnunet.plans.candidates import Candidate
from fpnunet.plans.plan_checks import check_plan, check_raw
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
    the final checkpoint (fpnunet.training.batchnorm): short runs with small batches otherwise
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
