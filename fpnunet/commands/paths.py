"""``fpn_paths``: the three data roots, where each comes from, and the datasets found in them.

::

    fpn_paths            # every dataset
    fpn_paths -d 900     # one dataset

Reads folder listings only (no image is opened); imports nothing heavy.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from fpnunet import cli_args, paths
from fpnunet.cli_utils import run_cli
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PreprocessedDataset, plans_file

PROGRAM = "fpn_paths"


@dataclass(frozen=True)
class PathsConfig:
    """What ``fpn_paths`` lists: every dataset, or one."""

    dataset: str | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Show the data roots every fpn_* command uses (FPN_RAW, FPN_PREPROCESSED, FPN_RESULTS; "
                    "unset: fpn_data/ of the nearest folder upwards that has one, else ./fpn_data) and the "
                    "datasets in them.",
    )
    cli_args.add_dataset(p, required=False, help="show only this dataset (default: every dataset found)")
    return p


def raw_summary(folder: Path) -> str:
    """``60 training cases (45 labelled), 12 test``, or ``-``."""
    if not folder.is_dir():
        return "-"
    from fpnunet.raw_dataset import count_labels, count_volumes  # lazy: start-up time (SimpleITK only when listing)

    cases = count_volumes(folder, "Tr")
    text = f"{cases} training cases ({count_labels(folder, 'Tr')} labelled)"
    test = count_volumes(folder, "Ts")
    return text + (f", {test} test" if test else "")


def preprocessed_summary(folder: Path) -> str:
    """``plans.json: fpn (depth64/, 60 cases)``, or ``-``."""
    if not folder.is_dir():
        return "-"
    try:
        with open(plans_file(folder)) as f:
            plan = json.load(f)
    except (OSError, ValueError):
        return "no plans.json"

    parts = []
    for name, config in (plan.get("configurations") or {}).items():
        ident = str(config.get("data_identifier", ""))
        labelled = len(PreprocessedDataset(folder / ident).labelled_files()) if ident else 0
        parts.append(f"{name} ({ident}/: {labelled} labelled cases)" if ident else name)
    return "plans.json: " + (", ".join(parts) or "no configuration")


def results_summary(folder: Path) -> str:
    """``fpn__lf1__scratch (fold_0 fold_1), pretrain__fpn__FAF (fold_all)``, or ``-``."""
    if not folder.is_dir():
        return "-"
    parts = []
    for model in sorted(p for p in folder.iterdir() if p.is_dir()):
        folds = sorted(f.name for f in model.glob("fold_*") if f.is_dir())
        parts.append(f"{model.name} ({' '.join(folds) or 'no fold'})")
    return ", ".join(parts) or "no model"


def datasets_found() -> list[str]:
    """Every ``DatasetXXX_NAME`` folder in any of the three roots, by id."""
    names: set[str] = set()
    for kind in paths.ROOT_VARIABLES:
        root = paths.root(kind)
        if root.is_dir():
            names |= {p.name for p in root.iterdir() if p.is_dir() and paths.dataset_id_of(p.name) is not None}
    return sorted(names, key=lambda n: (paths.dataset_id_of(n), n))


def report(dataset: str | None = None) -> str:
    """The text ``fpn_paths`` prints."""
    lines = ["data roots:"]
    for kind, var in paths.ROOT_VARIABLES.items():
        root = paths.root(kind)
        state = "" if root.is_dir() else "  (does not exist yet)"
        lines.append(f"  {var:<16} {root}{state}")
        lines.append(f"  {'':<16} from {paths.root_origin(kind)}")
    names = [paths.resolve_dataset(dataset)] if dataset is not None else datasets_found()
    if not names:
        lines.append("datasets: none found (write one with fpn_make_synthetic -o $FPN_RAW/Dataset900_SynthGA, "
                     "or put a DatasetXXX_NAME folder under FPN_RAW)")
        return "\n".join(lines)
    lines.append("datasets:")
    for name in names:
        lines.append(f"  {name}")
        lines.append(f"    raw:          {raw_summary(paths.raw_root() / name)}")
        lines.append(f"    preprocessed: {preprocessed_summary(paths.preprocessed_root() / name)}")
        lines.append(f"    results:      {results_summary(paths.results_root() / name)}")
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> PathsConfig:
    return PathsConfig(args.dataset)


def run(config: PathsConfig) -> int:
    """Print the roots block (this command's data-roots line, with where each root comes from) and
    the datasets."""
    try:
        print(report(config.dataset))
    except OSError as exc:
        raise FPNError(f"{exc.filename}: cannot list ({exc.strerror})") from None
    return 0


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run(config_from_args(build_parser().parse_args(argv)))


if __name__ == "__main__":  # pragma: no cover
    main()
