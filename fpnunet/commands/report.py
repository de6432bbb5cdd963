"""``fpn_report``: one self-contained HTML file of a prediction folder.

::

    fpn_report -p PRED_DIR [-r REF_DIR] [-d DATASET] [-i IMAGES_DIR] [--visits visits.csv] [-o report.html]

For every case of ``PRED_DIR``: a thumbnail that enlarges to its overlay (outline on the SLO or a
projection of the volume), area per class (mm^2), square-root area, number of lesions and focality,
Dice and HD95 with ``-r``; failed cases with their error. With visits (``dataset.json`` ``visits``,
or ``--visits`` CSV ``case,patient,eye,date``) a chart per eye of area and square-root area over
time with the fitted growth rate, and ``<report>_growth.csv`` beside the HTML.

``-d`` reads the raw dataset's ``dataset.json`` (labels, colours, visits) and looks for pictures in
its ``enfaceTs/Tr`` and ``imagesTs/Tr`` folders; ``-i`` names the folder of input volumes (and
its ``enface`` sibling) instead. Default output: ``PRED_DIR/report.html``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from fpnunet import cli_args
from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.paths import raw_dir

__all__ = ["main", "build_parser"]


@dataclass(frozen=True)
class ReportConfig:
    """The checked flags of ``fpn_report``."""

    pred: Path
    output: Path
    ref: str | None = None
    dataset: str | None = None
    input: str | None = None
    visits: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_report",
        description="One self-contained HTML report of a prediction folder: overlays, areas, Dice, growth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-p", "--pred", required=True, help="folder of predicted label maps (fpn_predict's output)")
    p.add_argument("-r", "--ref", help="folder of reference label maps: adds Dice and HD95 and reference outlines "
                                        "(default: none)")
    cli_args.add_dataset(p, required=False, help="dataset id or folder name: labels, colours and visits from its "
                                                 "dataset.json (default: none)")
    p.add_argument("-i", "--input", "--images", dest="input",
                   help="folder of the input volumes CASE_0000<ending> (pictures; default: the "
                        "dataset's imagesTs/imagesTr with -d)")
    p.add_argument("--visits", help="CSV with the header case,patient,eye,date (adds to dataset.json's visits; "
                                    "default: none)")
    p.add_argument("-o", "--output", help="HTML file to write (default PRED/report.html)")
    return p


def config_from_args(args: argparse.Namespace) -> ReportConfig:
    """Every folder and file checked before anything is read or written."""
    pred = Path(args.pred)
    if not pred.is_dir():
        raise FPNError(f"{pred}: prediction folder not found")
    if args.ref and not Path(args.ref).is_dir():
        raise FPNError(f"{args.ref}: reference folder not found")
    if args.input and not Path(args.input).is_dir():
        raise FPNError(f"{args.input}: image folder not found")
    if args.visits and not Path(args.visits).is_file():
        raise FPNError(f"{args.visits}: visits CSV not found")
    out = Path(args.output) if args.output else pred / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise FPNError(f"-o {out}: the report is an HTML file; give a name ending in .html")
    if out.is_dir():
        raise FPNError(f"-o {out}: is a folder; give a file name ending in .html")
    return ReportConfig(pred, out, args.ref, args.dataset, args.input, args.visits)


def run(config: ReportConfig) -> int:
    from fpnunet.raw_dataset import DATASET_FILE, dataset_file, load_dataset_json  # lazy: start-up time
    from fpnunet.report.html import make_report  # lazy: start-up time

    dataset_json = None
    source = DATASET_FILE
    folders: list[str | os.PathLike | None] = [config.input] if config.input else []
    axis: int | str = "auto"
    if config.dataset is not None:
        raw = raw_dir(config.dataset)
        info = load_dataset_json(raw)
        dataset_json, source, axis = info.raw, str(dataset_file(raw)), info.projection_axis
        if not config.input:
            folders.append(raw)
    html, csv = make_report(config.pred, config.output, config.ref, dataset_json, source, folders, config.visits,
                            projection_axis=axis)
    print(f"report: {html}")
    if csv is not None:
        print(f"growth rates: {csv}")
    return 0


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)

