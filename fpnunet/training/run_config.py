"""The one description of a training run: :class:`RunConfig`, frozen, plain values only.

:func:`fpnunet.training.configure.build_run_config` builds it once from the plan, the trainer's
overrides and the command line; everything below the command (the run, the trainer, the loop,
the loader) takes it whole and asks nothing of the plan's training defaults again. It is saved
whole in every checkpoint (``run_config``) and in the fold folder (``run_config.json``);
:meth:`RunConfig.from_dict` loads it back equal.

Checkpoints written before it existed carry ``args`` (the command line with its defaults filled
in, the loop settings under ``loop``) and ``hyperparameters`` instead: :func:`saved_settings`
reads either layout as one flat dict, which is all a resumed run looks at (world size, the
settings a ``--continue`` warns about).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpnunet.atomic import load_json, save_json
from fpnunet.errors import FPNError
from fpnunet.plans.training_params import AugmentParams, LossParams, params_from_dict

RUN_CONFIG_FILE = "run_config.json"
LR_RULE = "none"
"""How the lr follows the world size (:data:`fpnunet.distributed.LR_RULE`: not at all)."""
PRECISIONS = ("bf16", "fp32")
_COUNTS = {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 1, "val_every": 0, "bn_recalibration": 0,
           "num_workers": 0, "n_pictures": 0}
"""Whole-number settings and their smallest allowed value (also checked on the flags)."""
_SOURCE = "plans.json/command line: "


def check_count(name: str, value: Any, source: str = _SOURCE) -> None:
    low = _COUNTS[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive whole number" if low == 1 else "a whole number >= 0"
        flag = "--" + {"n_pictures": "pictures"}.get(name, name).replace("_", "-")
        raise FPNError(f"{source}{name if source else flag} must be {what}, got {value!r}")


def check_positive(name: str, value: Any, source: str = _SOURCE, zero: bool = False) -> None:
    """A finite number > 0 (``zero``: >= 0)."""
    bad = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
           or value < 0 or (value == 0 and not zero))
    if bad:
        what = ">= 0" if zero else "> 0"
        raise FPNError(f"{source}{name if source else '--' + name.replace('_', '-')} must be a finite number "
                       f"{what}, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, resolved (no field means "ask the plan")."""

    # what runs
    program: str = "fpn_train"
    trainer: str = "supervised"
    dataset: str = ""
    config: str = ""
    """The plan configuration's name."""
    fold: str = "all"
    # where
    preprocessed_dir: str = ""
    data_dir: str = ""
    raw_dir: str | None = None
    model_dir: str = ""
    fold_dir: str = ""
    # cases
    train_cases: tuple[str, ...] = ()
    val_cases: tuple[str, ...] = ()
    unlabelled_cases: tuple[str, ...] = ()
    label_fraction: float = 1.0
    # the model
    network: str = "fpn"
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 1
    num_outputs: int = 1
    enface_inputs: tuple[str, ...] = ()
    """En-face modalities the network takes as input channels (prediction reads them too)."""
    # initialisation
    pretrained: str = "none"
    tag: str = "scratch"
    pretrained_path: str | None = None
    pretrained_message: str = ""
    partial_load: bool = False
    encoder_weights: str = "none"
    # hyperparameters
    epochs: int = 1
    iterations_per_epoch: int = 1
    batch_size: int = 2
    lr: float = 0.1
    weight_decay: float = 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "poly"
    val_every: int = 5
    bn_recalibration: int = 0
    grad_clip: float = 12.0
    """Gradient-norm clipping threshold; 0 turns clipping off."""
    foreground_oversample: float = 0.33
    precision: str = "fp32"
    num_workers: int = 0
    seed: int = 0
    loss: str = "dice_ce"
    loss_params: LossParams = field(default_factory=LossParams)
    augmentation: str = "default"
    augment_params: AugmentParams = field(default_factory=AugmentParams)
    # pretraining (the reconstruction trainer)
    target: str = ""
    invert: bool = False
    val_fraction: float = 0.0
    n_pictures: int = 0
    # runtime
    device: str = "cpu"
    compile: bool = False
    channels_last: bool = True
    progress: bool = True
    heartbeat: float = 60.0
    """Without the progress bar: a one-line progress report every this many seconds (0: none)."""
    sync_bn: bool = True
    world_size: int = 1
    lr_rule: str = LR_RULE
    # how the run starts
    resume: bool = False
    overwrite: bool = False
    val_only: bool = False
    val_checkpoint: str = "final"
    save_probabilities: bool = False
    """The final validation also writes ``validation/CASE.npz`` (``--npz``)."""

    def __post_init__(self) -> None:
        for name in _COUNTS:
            check_count(name, getattr(self, name))
        check_positive("lr", self.lr)
        for name in ("weight_decay", "momentum", "grad_clip"):
            check_positive(name, getattr(self, name), zero=True)
        if self.precision not in PRECISIONS:
            raise FPNError(f"{_SOURCE}precision must be bf16 or fp32, got {self.precision!r}")
        if not 0 <= self.foreground_oversample <= 1:
            raise FPNError(f"{_SOURCE}foreground_oversample must be in [0, 1], got {self.foreground_oversample!r}")

    # ------------------------------------------------------------------ derived
    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def validates_at(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` ends with a validation (every ``val_every``, and the last)."""
        done = epoch + 1
        return done == self.epochs or (self.val_every > 0 and done % self.val_every == 0)

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists); ``global_batch`` is added for readers."""
        d = dataclasses.asdict(self)
        return {k: _plain(v) for k, v in d.items()} | {"global_batch": self.global_batch}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "run_config") -> RunConfig:
        """The config :meth:`to_dict` gave (unknown keys are an error naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"global_batch"})
        if unknown:
            raise FPNError(f"{where}: unknown key(s) {unknown}")
        values = {k: v for k, v in d.items() if k in names}
        for f in dataclasses.fields(cls):
            if f.name in values and str(f.type).startswith("tuple"):
                values[f.name] = tuple(values[f.name])
        values["loss_params"] = params_from_dict(LossParams, values.get("loss_params"), f"{where} loss_params")
        values["augment_params"] = params_from_dict(AugmentParams, values.get("augment_params"),
                                                    f"{where} augment_params")
        return cls(**values)

    def save(self, folder: str | Path) -> Path:
        """``folder/run_config.json`` (written atomically)."""
        path = Path(folder) / RUN_CONFIG_FILE
        save_json(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RunConfig:
        path = Path(folder) / RUN_CONFIG_FILE
        try:
            return cls.from_dict(load_json(path), str(path))
        except (OSError, ValueError) as exc:
            raise FPNError(f"{path}: cannot read the run's settings ({exc})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def saved_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's run settings as one flat dict, in either layout: ``run_config`` (this round)
    or ``args`` (+ ``hyperparameters``, + ``args["loop"]``) of checkpoints written before it."""
    if isinstance(checkpoint.get("run_config"), dict):
        return dict(checkpoint["run_config"])
    args = dict(checkpoint.get("args") or {})
    loop = args.pop("loop", None) or {}
    old = {k: v for k, v in loop.items() if k in ("precision", "compile", "sync_bn", "device")}
    return old | dict(checkpoint.get("hyperparameters") or {}) | args
