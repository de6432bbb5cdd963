"""Where the choice's test Dice goes: scans with a lesion against lesion-free scans.

Reads a per-case CSV of ``benchmarks/choice_holdout.py`` and, for each dataset, its test labels
(``DatasetNNN_Name:LABELS_FOLDER``, the ``labelsTs`` the CSV was scored on). Per single candidate
and the chosen pipeline: the test Dice over all scans, over the scans with a lesion, and how many
lesion-free scans got a false positive (Dice 0 there: the mean foreground Dice of an empty
reference is 1 for an empty mask, 0 otherwise). Then the issue's goal recomputed on the scans with
a lesion only::

    python benchmarks/lesion_free_split.py docs/choosing/holdout80_confirm.csv \\
        Dataset973_Clear5b:/tmp/s5-26/raw80/Dataset973_Clear5b/labelsTs \\
        Dataset974_Faint5b:/tmp/s5-26/raw80/Dataset974_Faint5b/labelsTs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choice_holdout import DEFAULT, goal_verdict, mean_percent, read_pipelines, read_rows  # noqa: E402

from fpnunet.cli_utils import run_cli  # noqa: E402
from fpnunet.errors import FPNError  # noqa: E402
from fpnunet.io import read_image  # noqa: E402


def lesion_free_cases(labels: Path) -> set[str]:
    """The cases of a ``labelsTs`` folder whose label map has no foreground."""
    files = sorted(p for p in labels.iterdir() if p.is_file())
    if not files:
        raise FPNError(f"{labels}: no label files")
    out = set()
    for p in files:
        if not np.any(read_image(p).array):
            out.add(p.name.split(".")[0])
    return out


def split_report(rows: list[dict], empty: set[str]) -> list[str]:
    pipes, tests, chosen = read_pipelines(rows)
    cases = sorted(next(iter(tests.values())))
    lesion = [c for c in cases if c not in empty]
    healthy = [c for c in cases if c in empty]
    singles = sorted((p.name for p in pipes if len(p.members) == 1), key=lambda n: -mean_percent(tests[n], lesion))
    out = [f"| pipeline | test Dice, all {len(cases)} | with a lesion ({len(lesion)}) | "
           f"lesion-free scans with a false positive (of {len(healthy)}) |", "|---|---|---|---|"]
    for name in [*singles, *([chosen] if chosen not in singles else [])]:
        fp = sum(tests[name][c] < 0.5 for c in healthy)
        mark = " **(chosen)**" if name == chosen else (" (default)" if name == DEFAULT else "")
        everything, with_lesion = mean_percent(tests[name], cases), mean_percent(tests[name], lesion)
        out.append(f"| {name}{mark} | {everything:.1f} | {with_lesion:.1f} | {fp} |")
    best = singles[0]
    c, b = mean_percent(tests[chosen], lesion), mean_percent(tests[best], lesion)
    d = mean_percent(tests[DEFAULT], lesion) if DEFAULT in tests else float("nan")
    out += ["", f"- scans with a lesion only: chosen {c:.1f}, best single {best} {b:.1f} (chosen - best {c - b:+.1f}), "
            f"default {d:.1f} (chosen - default {c - d:+.1f}): goal {goal_verdict(c, b, d)}"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv")
    p.add_argument("labels", nargs="+", metavar="DATASET:LABELS_FOLDER")
    args = p.parse_args(argv)
    rows = read_rows(Path(args.csv))
    for spec in args.labels:
        dataset, _, folder = spec.partition(":")
        if not Path(folder).is_dir():
            raise FPNError(f"{folder}: not a folder (give DATASET:LABELS_FOLDER)")
        mine = [r for r in rows if r["dataset"] == dataset]
        if not mine:
            raise FPNError(f"{args.csv}: no rows of {dataset}")
        print(f"### {dataset}\n")
        print("\n".join(split_report(mine, lesion_free_cases(Path(folder)))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main)())
