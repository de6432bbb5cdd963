"""The model card of a model package: what the model is, what it saw, how well it did.

Built by ``fpn_export_model`` from aggregate facts only (counts, ranges, medians, per-fold Dice):
no case name and no patient id ever enters it. ``fpn_predict`` prints :func:`summary_line` and
:func:`spacing_warning` when the model folder holds a card (file names: :mod:`fpnunet.model_package`).
"""
from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

from fpnunet.model_package import read_card

CARD_VERSION = 1
TASK = "en-face segmentation of OCT volumes: a 3D volume (B-scans, depth, A-scans) in, a 2D en-face label map out"
DEFAULT_INTENDED_USE = ("research: measuring lesions on the en-face plane of OCT volumes like those the model was "
                        "trained on; not a medical device, every mask to be reviewed by a grader")
SPACING_TOLERANCE = 0.10
"""Relative margin around the training spacings before :func:`spacing_warning` speaks."""


@dataclass
class CardFacts:
    """What the exporter knows about a model folder (aggregates only)."""

    model: str
    dataset: str
    configuration: str
    network: str
    labels: dict[str, int]
    channel_names: dict[str, str]
    enface_modalities: list[str]
    checkpoint: str
    folds: list[str]
    epochs: dict[str, int]
    licence: str
    intended_use: str = DEFAULT_INTENDED_USE
    fingerprint: dict[str, Any] | None = None
    fold_dice: dict[str, float] = field(default_factory=dict)
    pretraining: str = "unknown"
    devices: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def training_data(fp: dict[str, Any] | None) -> dict[str, Any]:
    """The fingerprint's summary: counts, median shape, spacing range; ``{}`` without one."""
    if not fp:
        return {}
    spacings = [c["spacing"] for c in (fp.get("cases") or {}).values() if isinstance(c, dict) and c.get("spacing")]
    out: dict[str, Any] = {
        "labelled_volumes": fp.get("num_labelled"), "unlabelled_volumes": fp.get("num_unlabelled"),
        "test_volumes": fp.get("num_test"), "median_shape_bda": fp.get("median_shape"),
        "median_spacing_bda_mm": fp.get("median_spacing"),
        "retina_band_height_p95": fp.get("retina_band_height_p95"), "intensity": fp.get("intensity"),
        "foreground_fraction_mean": fp.get("foreground_fraction_mean"),
    }
    if spacings:
        out["spacing_min_bda_mm"] = [min(s[i] for s in spacings) for i in range(3)]
        out["spacing_max_bda_mm"] = [max(s[i] for s in spacings) for i in range(3)]
    return out


def cross_validation(fold_dice: dict[str, float]) -> dict[str, Any]:
    """Per-fold Dice with mean, standard deviation, min and max (``{}`` without any)."""
    if not fold_dice:
        return {}
    values = list(fold_dice.values())
    return {"dice_per_fold": dict(fold_dice), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def build_card(facts: CardFacts, exported: str) -> dict[str, Any]:
    """The card as a JSON-ready dict."""
    return {
        "card_version": CARD_VERSION, "model": facts.model, "dataset": facts.dataset, "task": TASK,
        "configuration": facts.configuration, "network": facts.network, "labels": dict(facts.labels),
        "input_channels": dict(facts.channel_names), "enface_modalities": list(facts.enface_modalities),
        "training_data": training_data(facts.fingerprint), "devices": sorted(set(facts.devices)),
        "cross_validation": cross_validation(facts.fold_dice), "pretraining": facts.pretraining,
        "checkpoint": facts.checkpoint, "folds": list(facts.folds), "epochs": dict(facts.epochs),
        "versions": dict(facts.versions), "intended_use": facts.intended_use, "licence": facts.licence,
        "exported": exported,
    }


def _fmt(values: Any, digits: int = 4) -> str:
    if not isinstance(values, (list, tuple)):
        return "unknown" if values is None else str(values)
    return " x ".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def summary_line(card: dict[str, Any]) -> str:
    """One line: model, labels, training volumes, devices, spacing, cross-validation Dice, licence."""
    data = card.get("training_data") or {}
    cv = card.get("cross_validation") or {}
    labels = [k for k, v in (card.get("labels") or {}).items() if v != 0]
    volumes = (f"{data.get('labelled_volumes')} labelled + {data.get('unlabelled_volumes')} unlabelled volumes"
               if data else "training data unknown")
    dice = (f"CV Dice {cv['mean']:.3f} +/- {cv['std']:.3f} over {len(cv['dice_per_fold'])} fold(s)" if cv
            else "no cross-validation Dice")
    devices = ", ".join(card.get("devices") or []) or "devices unknown"
    return (f"model card: {card.get('model')} ({card.get('network')}) of {card.get('dataset')}: "
            f"{', '.join(labels)}; {volumes} ({devices}; median spacing "
            f"{_fmt(data.get('median_spacing_bda_mm'))} mm); {dice}; pretraining {card.get('pretraining')}; "
            f"licence {card.get('licence')}")


def spacing_warning(card: dict[str, Any], spacing_ba: tuple[float, float] | list[float], where: str) -> str | None:
    """A warning when the en-face spacing ``(sB, sA)`` lies outside the training spacings (+/- 10 %)."""
    data = card.get("training_data") or {}
    lo, hi = data.get("spacing_min_bda_mm"), data.get("spacing_max_bda_mm")
    if not lo or not hi or len(spacing_ba) != 2:
        return None
    lo, hi = [lo[0], lo[2]], [hi[0], hi[2]]
    off = [axis for axis, v, a, b in zip("BA", spacing_ba, lo, hi, strict=True)
           if not (a * (1 - SPACING_TOLERANCE) <= float(v) <= b * (1 + SPACING_TOLERANCE))]
    if not off:
        return None
    return (f"{where}: en-face spacing {_fmt([float(v) for v in spacing_ba])} mm (B x A) lies outside what the "
            f"model saw ({_fmt(lo)} to {_fmt(hi)} mm; model card) along {', '.join(off)}: check the masks")


def device_warning(card: dict[str, Any], device: str | None, where: str) -> str | None:
    """A warning when ``device`` (an import format, e.g. ``DICOM OPT``) is not one the card lists."""
    seen = card.get("devices") or []
    if not device or not seen or device in seen:
        return None
    return f"{where}: device {device} is not one the model saw ({', '.join(seen)}; model card): check the masks"


@dataclass(frozen=True)
class CardCheck:
    """What ``fpn_predict`` says about a model folder with a card: its line, and per case a warning."""

    card: dict[str, Any]

    @classmethod
    def of(cls, model_dir: str | os.PathLike) -> CardCheck | None:
        card = read_card(model_dir)
        return cls(card) if card is not None else None

    @classmethod
    def announce(cls, model_dir: str | os.PathLike) -> CardCheck | None:
        """:meth:`of`, printing the card's line on stderr."""
        check = cls.of(model_dir)
        if check is not None:
            print(check.line, file=sys.stderr)
        return check

    @property
    def line(self) -> str:
        return summary_line(self.card)

    def check(self, case: str, spacing_ba: tuple[float, float], device: str | None = None) -> list[str]:
        notes = [spacing_warning(self.card, spacing_ba, case), device_warning(self.card, device, case)]
        return [n for n in notes if n]


def card_markdown(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: the card for people."""
    data = card.get("training_data") or {}
    cv = card.get("cross_validation") or {}
    lines = [f"# Model card: {card['model']}", "", summary_line(card), "",
             f"- **Task**: {card['task']}",
             f"- **Dataset**: {card['dataset']}; configuration `{card['configuration']}`, network "
             f"`{card['network']}`",
             f"- **Labels**: {', '.join(f'{k} = {v}' for k, v in card['labels'].items())}",
             f"- **Input channels**: {', '.join(card['input_channels'].values()) or 'unknown'}; en-face "
             f"modalities of the dataset: {', '.join(card['enface_modalities']) or 'none'}",
             f"- **Training data**: {data.get('labelled_volumes', 'unknown')} labelled, "
             f"{data.get('unlabelled_volumes', 'unknown')} unlabelled, {data.get('test_volumes', 'unknown')} test "
             f"volumes; median shape {_fmt(data.get('median_shape_bda'))} (B x D x A); spacing "
             f"{_fmt(data.get('spacing_min_bda_mm'))} to {_fmt(data.get('spacing_max_bda_mm'))} mm",
             f"- **Devices seen**: {', '.join(card['devices']) or 'unknown (not imported with fpn_import)'}",
             f"- **Pretraining**: {card['pretraining']}",
             f"- **Weights**: checkpoint `{card['checkpoint']}` of fold(s) {', '.join(card['folds'])}",
             f"- **Versions**: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}",
             f"- **Intended use**: {card['intended_use']}",
             f"- **Licence**: {card['licence']}",
             f"- **Exported**: {card['exported']}", ""]
    if cv:
        lines += ["## Cross-validation", "", "| fold | Dice |", "|---|---|"]
        lines += [f"| {fold} | {dice:.4f} |" for fold, dice in cv["dice_per_fold"].items()]
        lines += [f"| mean +/- sd | {cv['mean']:.4f} +/- {cv['std']:.4f} (min {cv['min']:.4f}, max "
                  f"{cv['max']:.4f}) |", ""]
    return "\n".join(lines)
