"""Candidate configurations: the methods ``fpn_train_folds -c all`` trains and
``fpn_find_best_configuration`` compares by cross-validation (docs/planner.md, "Candidates").

A :class:`Candidate` is one way to train a planned configuration: its initialisation (from
scratch or fine-tuned from the dataset's own FAF/SLO pretraining), its en-face input channels,
its trainer and its weight decay, with the reason it is on the list. :func:`propose_candidates`
makes the list from facts of the dataset (:class:`DatasetFacts`); a user adds candidates
(:func:`parse_candidate`, ``fpn_plan_and_preprocess --add-candidate``) or drops them
(``--drop-candidate``); both choices survive replanning.

The one hyperparameter rule with evidence behind it (docs/label_efficiency/README.md, "Weight
decay"): FPN trained from scratch uses weight decay :data:`SCRATCH_WEIGHT_DECAY` (5e-2), a
fine-tuned network the plan's 1e-4. Nothing here is a verdict on which candidate wins; that is
decided per dataset by cross-validation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fpnunet.cli_args import current_kwargs
from fpnunet.errors import FPNError
from fpnunet.raw_dataset import DatasetInfo, images_dir, list_cases
from fpnunet.results_layout import SCRATCH_TAG, full_model_folder_name, ssl_tag

SCRATCH_WEIGHT_DECAY = 5e-2
"""FPN from scratch with 4 labelled volumes, short runs: 50.8 -> 65.9 Dice (16 x 64, five folds,
5 of 5) and 67.1 -> 84.5 (32 x 128) against 1e-4 (docs/label_efficiency/README.md)."""
FINETUNE_WEIGHT_DECAY = 1e-4
"""FPN fine-tuned from FAF: 76.0 at 1e-4 against 69.5 at 5e-2 (same sweep); also the plan default."""
SCRATCH_DECAY_NETWORKS = ("fpn",)
"""Networks the scratch rule was measured on (the Lachinov baseline did not gain: 70.3 vs 71.5)."""
PRETRAIN_CHOICES = ("none", "FAF", "SLO")
TRAINERS = ("supervised", "cmc")


ENFACE_INPUT_CANDIDATES = (
    ("omnia", "omnia-enface", "Omnia-Net with the {mods} images as input channels", "Omnia-Net with en-face inputs"),
    ("plane2d", "plane2d-enface", "the {mods} images and projections of the volume as a 2D problem (whole plane, "
                                  "2D batch and augmentation)", "2D en-face-input"),
)
"""The configurations that take the en-face images as input channels: (configuration, candidate
name, reason, what a note calls it); a candidate when every training and test case has them."""


@dataclass(frozen=True)
class DatasetFacts:
    """What the candidate rules look at."""

    configurations: tuple[str, ...]
    """Planned configuration names (= network names)."""
    enface_modalities: tuple[str, ...] = ()
    enface_counts: dict[str, int] = field(default_factory=dict)
    """Training cases (labelled or not) with each en-face image: a pretraining needs some."""
    every_case_has_enface: bool = False
    """Every training *and* test case has every en-face modality (en-face input channels need them at prediction)."""
    num_unlabelled_with_enface: int = 0


@dataclass(frozen=True)
class Candidate:
    """One candidate: a configuration and how it is trained."""

    name: str
    config: str
    pretrained: str = "none"
    """``none`` (scratch), or the en-face modality whose pretraining run it is fine-tuned from."""
    enface_inputs: tuple[str, ...] = ()
    trainer: str = "supervised"
    weight_decay: float = FINETUNE_WEIGHT_DECAY
    reason: str = ""
    source: str = "rule"
    """``rule`` (proposed by the planner) or ``user`` (added; kept over replanning)."""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " /:=,"):
            raise FPNError(f"candidate name {self.name!r}: use letters, digits, '-' and '_'")
        if self.pretrained not in PRETRAIN_CHOICES:
            raise FPNError(f"candidate {self.name}: pretrained must be one of {', '.join(PRETRAIN_CHOICES)}, "
                           f"got {self.pretrained!r}")
        if self.trainer not in TRAINERS:
            raise FPNError(f"candidate {self.name}: trainer must be one of {', '.join(TRAINERS)}, got {self.trainer!r}")
        if not self.weight_decay >= 0:
            raise FPNError(f"candidate {self.name}: weight_decay must be >= 0, got {self.weight_decay!r}")

    def train_flags(self) -> list[str]:
        """The ``fpn_train`` flags (besides dataset, fold and the schedule) that train this candidate."""
        flags = ["-c", self.config, "--trainer", self.trainer, "--weight-decay", f"{self.weight_decay:g}"]
        flags += ["--enface-inputs", *self.enface_inputs] if self.enface_inputs else ["--enface-inputs", "none"]
        return flags

    def model_folder_name(self) -> str:
        """The model folder its five folds train into (all labels): ``fpn__lf1__ssl-FAF``."""
        tag = SCRATCH_TAG if self.pretrained == "none" else ssl_tag(self.pretrained)
        return full_model_folder_name(self.config, 1.0, tag, self.enface_inputs, self.trainer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"enface_inputs": list(self.enface_inputs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        d = current_kwargs(d)  # plans written before the rename say enface_channels
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["enface_inputs"] = tuple(str(m) for m in known.get("enface_inputs", ()))
        try:
            return cls(**known)
        except TypeError as exc:
            raise FPNError(f"plans.json candidate {d.get('name', '?')}: {exc}") from None


def dataset_facts(fingerprint: dict[str, Any], raw: str | Path, info: DatasetInfo, configurations: list[str]
                  ) -> DatasetFacts:
    """The facts of a verified dataset: the fingerprint's training cases, plus the test cases'
    en-face images (``enfaceTs``), which en-face input channels need at prediction."""
    cases = fingerprint.get("cases", {})
    mods = tuple(info.enface_modalities)
    counts = {m: sum(m in c.get("enface", []) for c in cases.values()) for m in mods}
    test = list_cases(raw, info, "Ts") if images_dir(raw, "Ts").is_dir() else []
    every = bool(mods) and all(set(mods) <= set(c.get("enface", [])) for c in cases.values()) and all(
        set(mods) <= set(t.enface) for t in test)
    unlabelled = sum(1 for c in cases.values() if not c.get("labelled") and c.get("enface"))
    return DatasetFacts(tuple(configurations), mods, counts, every, unlabelled)


def weight_decay_for(network: str, pretrained: str, plan_default: float = FINETUNE_WEIGHT_DECAY) -> float:
    """The rule: FPN from scratch -> :data:`SCRATCH_WEIGHT_DECAY`; anything fine-tuned, or a network
    the rule was not measured on, -> the plan's default."""
    if pretrained == "none" and network in SCRATCH_DECAY_NETWORKS:
        return SCRATCH_WEIGHT_DECAY
    return plan_default


AUTO = "auto"
"""``fpn_plan_and_preprocess -c auto`` (the default): the planner picks the configurations."""
AUTO_ALWAYS = ("fpn", "lachinov")
"""Planned for every dataset: the FPN (scratch, fine-tuned, CMC candidates) and the Lachinov baseline."""


def auto_configurations(facts: DatasetFacts) -> tuple[list[str], str]:
    """``(configurations, reason)`` for ``-c auto``: :data:`AUTO_ALWAYS`, plus every configuration of
    :data:`ENFACE_INPUT_CANDIDATES` when every training and test case has every en-face image (their
    candidates need the images at prediction). Planning is cheap (one shared preprocessed folder per
    depth); which of them wins is left to cross-validation (``fpn_find_best_configuration``)."""
    configs = list(AUTO_ALWAYS)
    if facts.enface_modalities and facts.every_case_has_enface:
        extra = [c for c, *_ in ENFACE_INPUT_CANDIDATES]
        return configs + extra, (f"{', '.join(configs)} always; {', '.join(extra)} because every training and test "
                                 f"case has {'/'.join(facts.enface_modalities)} images")
    why = "the dataset has no en-face images" if not facts.enface_modalities else \
        "not every training and test case has every en-face image"
    return configs, f"{', '.join(configs)} always; no en-face-input configuration: {why}"


def propose_candidates(facts: DatasetFacts, plan_default_wd: float = FINETUNE_WEIGHT_DECAY
                       ) -> tuple[list[Candidate], list[str]]:
    """``(candidates, notes)``: the rule-based candidates and one line per method left out and why."""
    out: list[Candidate] = []
    notes: list[str] = []
    have = set(facts.configurations)
    pretrainable = [m for m in facts.enface_modalities if facts.enface_counts.get(m, 0) > 0]
    if "fpn" in have:
        wd = weight_decay_for("fpn", "none", plan_default_wd)
        out.append(Candidate("fpn-scratch", "fpn", weight_decay=wd,
                             reason=f"FPN from random init, weight decay {wd:g} (rule: scratch runs want the large "
                                    "one)"))
        for mod in pretrainable:
            out.append(Candidate(f"fpn-ssl-{mod}", "fpn", pretrained=mod,
                                 weight_decay=weight_decay_for("fpn", mod, plan_default_wd),
                                 reason=f"FPN fine-tuned from its {mod} reconstruction pretraining on every volume "
                                        f"with a {mod} image ({facts.enface_counts[mod]} training cases); fine-tuning "
                                        f"keeps weight decay {plan_default_wd:g}"))
        if not pretrainable:
            notes.append("no fine-tuned FPN: the dataset has no en-face image to pretrain on")
        if facts.num_unlabelled_with_enface > 0 and pretrainable:
            out.append(Candidate("fpn-cmc", "fpn", pretrained=pretrainable[0], trainer="cmc",
                                 weight_decay=plan_default_wd,
                                 reason=f"cross-modal consistency on {facts.num_unlabelled_with_enface} unlabelled "
                                        f"case(s) with en-face images, from the {pretrainable[0]} pretraining"))
        elif pretrainable:
            notes.append("no CMC: no unlabelled case with an en-face image")
    else:
        notes.append("no FPN candidates: configuration fpn is not planned (add -c fpn)")
    for config, name, what, missing in ENFACE_INPUT_CANDIDATES:
        if config not in have:
            notes.append(f"no {missing} candidate: configuration {config} is not planned (add -c {config})")
        elif facts.enface_modalities and facts.every_case_has_enface:
            mods = tuple(facts.enface_modalities)
            out.append(Candidate(name, config, enface_inputs=mods, weight_decay=plan_default_wd,
                                 reason=what.format(mods="/".join(mods)) + ": every training and test case has them"))
        else:
            notes.append(f"no {missing} candidate: not every training and test case has every en-face image")
    if "lachinov" in have:
        out.append(Candidate("lachinov-scratch", "lachinov", weight_decay=weight_decay_for("lachinov", "none",
                                                                                             plan_default_wd),
                             reason="the Lachinov et al. baseline from random init (strong with few labels on the "
                                    "project's synthetic data)"))
    else:
        notes.append("no Lachinov baseline: configuration lachinov is not planned (add -c lachinov)")
    return out, notes


def merge_candidates(proposed: list[Candidate], previous: list[Candidate], dropped: list[str]) -> list[Candidate]:
    """The proposed candidates plus the user's earlier additions, minus the dropped names; a user
    candidate replaces a rule candidate of the same name or model folder."""
    user = [c for c in previous if c.source == "user"]
    taken = {c.name for c in user} | {c.model_folder_name() for c in user}
    kept = [c for c in proposed if c.name not in taken and c.model_folder_name() not in taken]
    out = [c for c in kept + user if c.name not in set(dropped)]
    check_distinct(out)
    return out


def check_distinct(candidates: list[Candidate]) -> None:
    """Two candidates training into one model folder (they differ only by weight decay) are refused."""
    seen: dict[str, str] = {}
    for c in candidates:
        folder = c.model_folder_name()
        if folder in seen:
            raise FPNError(f"candidates {seen[folder]} and {c.name} would train into the same model folder {folder} "
                           "(they differ only by weight decay or name); drop one (--drop-candidate)")
        seen[folder] = c.name


def parse_candidate(spec: str) -> Candidate:
    """``NAME:CONFIG[:pretrained=FAF][:wd=0.01][:enface=SLO+FAF][:trainer=cmc]`` -> a user candidate."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise FPNError(f"--add-candidate {spec}: expected NAME:CONFIG[:pretrained=FAF|SLO|none][:wd=W]"
                       "[:enface=SLO+FAF][:trainer=supervised|cmc]")
    values: dict[str, Any] = {"name": parts[0], "config": parts[1], "source": "user",
                              "reason": f"added by the user ({spec})"}
    for part in parts[2:]:
        key, _, value = part.partition("=")
        if key == "pretrained":
            values["pretrained"] = value
        elif key == "wd":
            try:
                values["weight_decay"] = float(value)
            except ValueError:
                raise FPNError(f"--add-candidate {spec}: wd={value} is not a number") from None
        elif key == "enface":
            values["enface_inputs"] = tuple(m for m in value.split("+") if m)
        elif key == "trainer":
            values["trainer"] = value
        else:
            raise FPNError(f"--add-candidate {spec}: unknown key {key!r} (pretrained, wd, enface, trainer)")
    return Candidate(**values)


def format_candidates(candidates: list[Candidate], notes: list[str] | None = None) -> str:
    """One line per candidate (name, how it is trained, why), then the notes."""
    lines = [f"{len(candidates)} candidate configuration(s) (fpn_train_folds -d ID -c all trains them):"]
    width = max((len(c.name) for c in candidates), default=4)
    for c in candidates:
        how = (f"{c.config}, {'scratch' if c.pretrained == 'none' else 'from ' + c.pretrained + ' pretraining'}, "
               f"wd {c.weight_decay:g}"
               + (f", en-face inputs {'+'.join(c.enface_inputs)}" if c.enface_inputs else "")
               + (f", trainer {c.trainer}" if c.trainer != "supervised" else ""))
        lines.append(f"  {c.name.ljust(width)}  {how}: {c.reason}")
    lines += [f"  ({n})" for n in notes or []]
    return "\n".join(lines)
