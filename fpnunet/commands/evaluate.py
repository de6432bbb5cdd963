"""``fpn_evaluate``: evaluate en-face predictions against references.

::

    fpn_evaluate -r REF_DIR -p PRED_DIR [-d DATASET] [-o summary.json] [-np N]
    fpn_evaluate --crossval -d DATASET [--model MODEL_NAME] [-f 0 1 2 3 4] [-np N]
                 [--calibrate [--flag-rate 0.2] [-device auto|cpu|cuda]]

The first form writes ``PRED_DIR/summary.json`` (or ``-o``) and ``summary_per_case.csv`` beside
it; ``-d`` takes the labels (and reference file ending) from the raw dataset's ``dataset.json``,
otherwise the labels are the values present. The second gathers the folds' validation
predictions of a model folder into ``<model>/crossval_results/`` and evaluates them against the
raw ``labelsTr``. Both print a table of the per-class means and write ``overlays/CASE.png`` beside
the summary: prediction outline (class colour) and reference outline (green) on the case's SLO or
volume projection, Dice in the corner (:mod:`fpnunet.report.cases`).

``--calibrate`` (with ``--crossval``) also predicts every fold's validation cases with that fold,
its flip members kept apart, measures the ECE and fits one temperature, sets the QC flag's score
and threshold (``--flag-rate`` of the cases flagged) and writes ``<model>/calibration.json`` and
``crossval_results/uncertainty_per_case.csv`` (:mod:`fpnunet.evaluation.uncertainty`,
docs/uncertainty.md); ``fpn_predict`` then uses them.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet import cli_args
from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.paths import raw_dir

if TYPE_CHECKING:  # pandas, SimpleITK and the metrics are imported after parsing (fast --help)
    import pandas as pd


@dataclass(frozen=True)
class EvaluateConfig:
    """The checked flags of ``fpn_evaluate``: two folders, or the cross-validation of a model folder."""

    num_processes: int
    output: str | None = None
    dataset: str | None = None
    ref: str | None = None
    pred: str | None = None
    crossval: bool = False
    model: str | None = None
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    calibrate: bool = False
    flag_rate: float = 0.2
    device: str = "auto"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_evaluate",
        description="Dice, IoU, HD95 (mm) and lesion area (mm^2) of en-face predictions; writes an "
        "nnU-Net-style summary.json and a per-case CSV.",
    )
    p.add_argument("-r", "--ref", help="folder of reference label maps (default none)")
    p.add_argument("-p", "--pred", help="folder of predicted label maps, paired with -r by case name (default none)")
    cli_args.add_dataset(p, required=False, help="dataset id or folder name: labels come from its raw dataset.json "
                                                 "(default: the label values present)")
    p.add_argument("-o", "--output", help="summary json path (default PRED/summary.json, or "
                   "<model>/crossval_results/summary.json with --crossval)")
    cli_args.add_num_processes(p, 1, help="worker processes (default 1)")
    p.add_argument("--crossval", action="store_true",
                   help="evaluate the folds' validation predictions of a model folder against raw labelsTr")
    p.add_argument("--model", help="model folder name under $FPN_RESULTS/DatasetXXX (e.g. fpn__lf1__scratch); "
                   "default: the only one")
    cli_args.add_folds(p, help="folds to gather with --crossval (default 0 1 2 3 4)")
    p.add_argument("--calibrate", action="store_true", help="with --crossval: fit the temperature and the QC flag "
                   "on the out-of-fold predictions and write <model>/calibration.json (docs/uncertainty.md)")
    p.add_argument("--flag-rate", type=float, default=0.2,
                   help="with --calibrate: share of the cross-validation cases the QC flag marks 'check' (default 0.2)")
    cli_args.add_device(p)
    return p


def summary_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class means (and the foreground mean when there are several classes) as a table."""
    import pandas as pd

    names = {str(v): n for n, v in summary["labels"].items()}
    rows = {}
    for k, m in summary["mean"].items():
        name = names.get(k, k)
        rows[k if name == k else f"{name} ({k})"] = {
            "Dice": m["Dice"], "IoU": m["IoU"], "HD95 mm": m["HD95"],
            "HD95 NaN": summary["nan_count"][k].get("HD95", 0),
            "area err mm2": m["area_abs_error_mm2"], "ref area mm2": m["ref_area_mm2"],
        }
    if len(rows) > 1:
        f = summary["foreground_mean"]
        rows["foreground mean"] = {
            "Dice": f["Dice"], "IoU": f["IoU"], "HD95 mm": f["HD95"], "HD95 NaN": "",
            "area err mm2": f["area_abs_error_mm2"], "ref area mm2": f["ref_area_mm2"],
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _print_summary(summary: Mapping[str, Any]) -> None:
    table = summary_table(summary)
    title = f"{summary['num_cases']} case(s)"
    if "crossval" in summary:
        cv = summary["crossval"]
        title += f", cross-validation of {cv['model']} folds {cv['folds']}"
    print(title)
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"summary: {summary['summary_file']}\nper case: {summary['per_case_csv']}")


def _overlays(summary: Mapping[str, Any], dataset: str | None) -> None:
    """``overlays/CASE.png`` beside the summary; a picture that cannot be made is a warning."""
    from fpnunet.raw_dataset import load_dataset_json  # lazy: start-up time
    from fpnunet.report.cases import OVERLAY_DIR, write_evaluation_overlays  # lazy: start-up time

    dataset_json, folders = None, []
    if dataset is not None:
        dataset_json, folders = load_dataset_json(raw_dir(dataset)).raw, [raw_dir(dataset)]
    out = Path(summary["summary_file"]).parent / OVERLAY_DIR
    try:
        written, problems = write_evaluation_overlays(summary, out, dataset_json, folders)
    except FPNError as exc:  # e.g. a bad colour in dataset.json: the evaluation itself stands
        written, problems = [], [str(exc)]
    for msg in problems:
        print(f"warning: {msg}", file=sys.stderr)
    print(f"overlays: {out} ({len(written)} case(s))")


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """Every flag checked before any folder is read."""
    if args.num_processes < 1:
        raise FPNError(f"-np must be at least 1, got {args.num_processes}")
    if args.folds is not None and "all" in args.folds:
        raise FPNError("-f all: --crossval gathers the validation predictions of numbered folds (0 1 2 3 4)")
    if args.crossval:
        if args.dataset is None:
            raise FPNError("--crossval needs the dataset: -d DATASET")
        if args.ref or args.pred:
            raise FPNError("--crossval takes its references and predictions from the dataset; drop -r/-p")
        if not 0 < args.flag_rate < 1:
            raise FPNError(f"--flag-rate {args.flag_rate}: must be a share strictly between 0 and 1")
        folds = tuple(int(f) for f in args.folds) if args.folds is not None else (0, 1, 2, 3, 4)
        return EvaluateConfig(args.num_processes, args.output, args.dataset, crossval=True, model=args.model,
                              folds=folds, calibrate=args.calibrate, flag_rate=args.flag_rate, device=args.device)
    if args.model is not None or args.folds is not None or args.calibrate:
        raise FPNError("--model, --folds and --calibrate only apply with --crossval")
    if not args.ref or not args.pred:
        raise FPNError("give the reference and prediction folders: -r REF_DIR -p PRED_DIR (or --crossval -d D)")
    return EvaluateConfig(args.num_processes, args.output, args.dataset, args.ref, args.pred)


def run(config: EvaluateConfig) -> int:
    from fpnunet.evaluation.crossval import evaluate_crossval  # lazy: start-up time
    from fpnunet.evaluation.evaluate import evaluate_folders  # lazy: start-up time
    from fpnunet.raw_dataset import load_dataset_json  # lazy: start-up time

    if config.crossval:
        summary = evaluate_crossval(config.dataset, config.model, list(config.folds), config.num_processes,
                                    config.output)
    else:
        labels = ending = None
        if config.dataset is not None:
            info = load_dataset_json(raw_dir(config.dataset))
            labels = info.labels
            # the dataset's ending only when the folder holds such files (-r may point elsewhere)
            ref = Path(config.ref)
            if ref.is_dir() and any(p.name.lower().endswith(info.file_ending.lower()) for p in ref.iterdir()):
                ending = info.file_ending
        summary = evaluate_folders(config.ref, config.pred, labels, ending, config.num_processes, config.output)
    _print_summary(summary)
    _overlays(summary, config.dataset)
    if config.calibrate:
        _calibrate(config, summary["crossval"]["model"])
    sys.stdout.flush()
    return 0


def _calibrate(config: EvaluateConfig, model: str) -> None:
    """``--calibrate``: the uncertainty figures of the out-of-fold predictions, ``calibration.json``."""
    from fpnunet.evaluation.uncertainty import calibrate_crossval  # lazy: start-up time
    from fpnunet.paths import results_dir  # lazy: start-up time

    f = calibrate_crossval(results_dir(config.dataset) / model, config.dataset, list(config.folds),
                           config.flag_rate, device=config.device)
    rho, rho_area = f["spearman_one_minus_dice"], f["spearman_area_error"]
    print(f"uncertainty on {f['cases']} out-of-fold case(s) (mean Dice {f['mean_dice']:.3f}): ECE "
          f"{f['ece_before']:.4f} -> {f['ece_after']:.4f} with temperature {f['temperature']:.3f}")
    for s in rho:
        print(f"  Spearman of {s} with 1 - Dice {rho[s]:.3f}, with the area error {rho_area[s]:.3f}")
    print(f"  QC flag: {f['qc_score']} > {f['qc_threshold']:.4g} flags {f['flagged']:.0%} of the cases and catches "
          f"{f['worst_10pct_caught']:.0%} of the worst 10 %; the members' area interval holds the reference area "
          f"in {f['area_interval_coverage']:.0%} of the cases")
    print(f"calibration: {f['calibration_file']}\nper case: {f['per_case_csv']}")


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)

