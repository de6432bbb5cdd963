"""``fpn_suggest_labels``: rank unlabelled volumes by how much labelling each would help.

::

    fpn_suggest_labels -d DATASET -o OUT [--model NAME] [-c CONFIG] [-m MODEL_DIR] [-i FOLDER]
                       [--diversity 0.3] [--pictures 30] [-chk final] [-device auto|cpu|cuda]

Candidates are the dataset's unlabelled volumes (its preprocessed cases without a label: volumes in
``imagesTr`` with no ``labelsTr`` file), or with ``-i`` every ``CASE_0000<ending>`` volume of a
folder. Each is predicted by the model folder's ensemble with its members kept apart and ranked by
uncertainty with some diversity (:mod:`fpnunet.inference.suggest`); the dataset's labelled cases
(but those being ranked) count as already chosen, so volumes like them move down. Writes ``OUT/suggestions.csv`` and
``OUT/suggestions.html`` (:mod:`fpnunet.suggestion_folder`). Put the new labels into ``labelsTr``
and rerun ``fpn_plan_and_preprocess`` and ``fpn_train``: they pick the new labels up.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpnunet import cli_args, results_layout
from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.paths import results_dir

__all__ = ["main", "build_parser", "config_from_args", "run", "SuggestConfig"]


@dataclass(frozen=True)
class SuggestConfig:
    """The checked flags of ``fpn_suggest_labels``."""

    dataset: str
    output: Path
    model_dir: Path
    input: Path | None = None
    diversity: float = 0.3
    pictures: int = 30
    checkpoint: str = "final"
    device: str = "auto"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpn_suggest_labels",
                                description="Rank a dataset's unlabelled volumes (or a folder's) by how much "
                                            "labelling each would help: uncertainty with some diversity.")
    cli_args.add_dataset(p, required=True, help="dataset id or folder name (its model and unlabelled cases)")
    p.add_argument("-o", "--output", required=True, help="output folder (suggestions.csv, suggestions.html)")
    p.add_argument("--model", help="model folder name under $FPN_RESULTS/DatasetXXX (default: the only CONFIG__*)")
    cli_args.add_config(p, help="plan configuration picking the model folder CONFIG__* (default fpn)")
    p.add_argument("-m", "--model-dir", help="path of a trained model folder (wins over --model; default none)")
    p.add_argument("-i", "--input", help="rank the CASE_0000<ending> volumes of this folder instead of the "
                                         "dataset's unlabelled cases (default: none)")
    p.add_argument("--diversity", type=float, default=0.3,
                   help="weight of the distance to labelled / already suggested volumes, in [0, 1] (default 0.3)")
    p.add_argument("--pictures", type=int, default=30, help="pictures on the HTML page, top first (default 30)")
    cli_args.add_checkpoint(p)
    cli_args.add_device(p)
    return p


def config_from_args(args: argparse.Namespace) -> SuggestConfig:
    """Every flag checked, and the model folder found, before anything is written."""
    if not 0 <= args.diversity <= 1:
        raise FPNError(f"--diversity {args.diversity}: must be in [0, 1]")
    if args.pictures < 0:
        raise FPNError(f"--pictures {args.pictures}: must be 0 or more")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise FPNError(f"{out}: -o must name a folder, but this is a file")
    in_dir = Path(args.input) if args.input else None
    if in_dir is not None and not in_dir.is_dir():
        raise FPNError(f"{in_dir}: input folder not found")
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        root = results_dir(args.dataset)
        if not root.is_dir():
            raise FPNError(f"{root}: no trained models for dataset {args.dataset}")
        model_dir = results_layout.find_model_folder(root, args.model, args.config or "fpn")
    return SuggestConfig(str(args.dataset), out, model_dir, in_dir, args.diversity, args.pictures, args.checkpoint,
                         args.device)


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)


def run(config: SuggestConfig) -> int:
    from fpnunet.inference.predictor import Predictor  # lazy: start-up time
    from fpnunet.inference.suggest_run import candidate_volumes, labelled_features, score_volumes  # lazy: start-up time
    from fpnunet.report.overlay import Layer, class_colours  # lazy: start-up time
    from fpnunet.report.suggestions import render_suggestions  # lazy: start-up time
    from fpnunet.report.uncertainty import render_uncertainty  # lazy: start-up time
    from fpnunet.suggestion_folder import SuggestionFolder  # lazy: start-up time

    predictor = Predictor.from_model_folder(config.model_dir, checkpoint=config.checkpoint, device=config.device)
    volumes, names, where = candidate_volumes(predictor, config.dataset, config.input)
    reference = labelled_features(predictor, config.dataset, names)
    print(f"fpn_suggest_labels: {where}; {len(reference)} labelled case(s) count as chosen; "
          f"{len(predictor.networks)} fold(s) of {config.model_dir}", file=sys.stderr)
    ranked, data = score_volumes(predictor, config.model_dir, volumes, reference, config.diversity, config.pictures)
    labels = predictor.dataset_info.labels if predictor.dataset_info else predictor.plan.labels
    colours = class_colours(labels)
    pictures = {case: render_uncertainty(d.projection, d.spacing, d.votes,
                                         [Layer(d.mask == v, colours[n]) for n, v in labels.items() if v != 0])
                for case, d in data.items()}
    rows: list[dict[str, Any]] = [{
        "rank": c.rank, "case": c.case, "priority": round(c.score, 5), "qc_score": round(c.uncertainty.qc_score, 5),
        "distance": None if c.distance == float("inf") else round(c.distance, 5), "area_mm2": round(c.area_mm2, 4),
        "area_low_mm2": round(sum(c.uncertainty.area_low_mm2.values()), 4),
        "area_high_mm2": round(sum(c.uncertainty.area_high_mm2.values()), 4), "qc": c.uncertainty.qc}
        for c in ranked]
    note = (f"{len(rows)} volume(s), most useful to label first: uncertainty (QC score) with diversity "
            f"{config.diversity:g} (distance to labelled and already listed volumes). Magenta: where the "
            "ensemble's members disagree.")
    table, page = SuggestionFolder(config.output).write(
        rows, render_suggestions(rows, pictures, f"Volumes to label next: dataset {config.dataset}", note))
    print(f"fpn_suggest_labels: {len(rows)} volume(s) ranked -> {table}, {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
