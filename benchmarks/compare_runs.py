"""Compare finished runs made in different places, paired by fold and seed.

The label-efficiency sweep compares the methods of one sweep (one weight decay, one device). To
compare runs from several sweeps or plain ``fpn_train`` runs (e.g. FAF fine-tuning at weight decay
1e-4 against FPN from scratch at 5e-2), give each set a label::

    python benchmarks/compare_runs.py \\
        "FPN, wd 5e-2=docs/label_efficiency/weight_decay/large_planes_wd0.05_cpu/runs.csv@FPN" \\
        "FPN + FAF, wd 1e-3=fpn_data/results/le953_faf_wd1e-3_cpu/Dataset953_SynthGA/fpn__lf0.05__ssl-FAF" \\
        --out docs/label_efficiency/some_comparison

``LABEL=SOURCE``: SOURCE is a sweep's ``runs.csv`` (``@METHOD`` keeps that method's rows) or a model
folder whose ``fold_N/validation/summary.json`` hold the final validation (seed from the fold's
``command.txt``, label fraction from the folder name). A label may be given several times (e.g. one
model folder per seed). The first label is the reference. Prints
mean +- std Dice per label and fraction, and each label minus the reference on the pairs both
have; ``--out`` also writes ``runs.csv``, ``comparison.csv`` and ``paired_differences.csv`` there.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency_report import paired_differences, read_dice, summarise  # noqa: E402

from fpnunet.atomic import atomic_path  # noqa: E402
from fpnunet.cli_utils import run_cli  # noqa: E402
from fpnunet.errors import FPNError  # noqa: E402

COLUMNS = ["method", "fraction", "fold", "seed", "dice"]


def _seed_of(fold: Path) -> int:
    """The ``--seed`` of the fold's last recorded command (0 when none was given)."""
    command = fold / "command.txt"
    if not command.is_file():
        return 0
    seed = 0
    for line in command.read_text().splitlines():
        words = shlex.split(line)
        if "--seed" in words[:-1]:
            seed = int(words[words.index("--seed") + 1])
    return seed


def runs_of_model_folder(folder: Path, label: str) -> pd.DataFrame:
    """One row per ``fold_N`` of ``folder`` with a final validation."""
    match = re.search(r"__lf([0-9.]+)__", folder.name)
    fraction = float(match.group(1)) if match else 1.0
    rows = []
    for fold in sorted(folder.glob("fold_*")):
        if not (fold / "validation" / "summary.json").is_file() or not fold.name[5:].isdigit():
            continue
        rows.append({"method": label, "fraction": fraction, "fold": int(fold.name[5:]), "seed": _seed_of(fold),
                     "dice": read_dice(fold)})
    if not rows:
        raise FPNError(f"{folder}: no fold_N/validation/summary.json (no finished run in this model folder)")
    return pd.DataFrame(rows, columns=COLUMNS)


def runs_of_csv(path: Path, label: str, method: str | None) -> pd.DataFrame:
    """The rows of a sweep's ``runs.csv`` (those of ``method`` when given), relabelled."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise FPNError(f"{path}: cannot read it as a CSV table ({e})") from None
    missing = [c for c in COLUMNS if c not in table.columns and c != "seed"]
    if missing:
        raise FPNError(f"{path}: not a label-efficiency runs.csv (no column {', '.join(missing)})")
    if method is not None:
        known = sorted(table["method"].unique())
        table = table[table["method"] == method]
        if table.empty:
            raise FPNError(f"{path}: no run of method {method!r} (methods there: {known})")
    table = table.assign(method=label)
    if "seed" not in table.columns:
        table = table.assign(seed=0)
    return table[COLUMNS]


def read_source(spec: str) -> pd.DataFrame:
    """``LABEL=SOURCE`` as described in the module docstring."""
    label, sep, source = spec.partition("=")
    if not sep or not label or not source:
        raise FPNError(f"{spec!r}: expected LABEL=SOURCE (a runs.csv, runs.csv@METHOD or a model folder)")
    path, _, method = source.partition("@")
    p = Path(path)
    if p.is_dir():
        return runs_of_model_folder(p, label)
    if p.is_file():
        return runs_of_csv(p, label, method or None)
    raise FPNError(f"{p}: no such file or folder (in {spec!r})")


def compare(specs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(runs, summary, paired)`` of the labelled sources; the first label is the reference."""
    runs = pd.concat([read_source(s) for s in specs], ignore_index=True)
    order = list(dict.fromkeys(runs["method"]))
    twice = runs[runs.duplicated(["method", "fraction", "fold", "seed"], keep=False)]
    if not twice.empty:
        r = twice.iloc[0]
        raise FPNError(f"label {r['method']!r} has two runs at fraction {r['fraction']:g}, fold {r['fold']}, seed "
                       f"{r['seed']}: give the sources different labels")
    fractions = sorted(runs["fraction"].astype(float).unique())
    return runs, summarise(runs, order, fractions), paired_differences(runs, order, fractions)


def render(summary: pd.DataFrame, paired: pd.DataFrame) -> str:
    """Markdown: mean +- std Dice per label and fraction, then the paired differences."""
    lines = ["| label | fraction | Dice % | n |", "|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.method} | {r.fraction:g} | {r.mean:.1f} +- {r.std:.1f} | {r.n} |")
    lines += ["", "| label - reference (same fold and seed) | fraction | Dice points | pairs | ahead on |",
              "|---|---|---|---|---|"]
    for r in paired.itertuples():
        lines.append(f"| {r.method} - {r.reference} | {r.fraction:g} | {r.mean:+.1f} +- {r.std:.1f} | {r.n} | "
                     f"{r.wins} of {r.n} |")
    return "\n".join(lines)


@run_cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", metavar="LABEL=SOURCE",
                   help="runs.csv, runs.csv@METHOD or a model folder; the first is the reference")
    p.add_argument("--out", type=Path, help="also write runs.csv, comparison.csv, paired_differences.csv here")
    a = p.parse_args(argv)
    if len(a.sources) < 2:
        raise FPNError("give at least two LABEL=SOURCE to compare")
    runs, summary, paired = compare(a.sources)
    text = render(summary, paired)
    print(text)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        for name, table in (("runs.csv", runs), ("comparison.csv", summary), ("paired_differences.csv", paired)):
            with atomic_path(a.out / name, suffix=".csv") as tmp:
                table.to_csv(tmp, index=False)
        with atomic_path(a.out / "comparison.md", suffix=".md") as tmp:
            tmp.write_text(f"```\npython benchmarks/compare_runs.py {shlex.join(argv or sys.argv[1:])}\n```\n\n"
                           f"{text}\n")
        print(f"wrote {a.out}/comparison.md, runs.csv, comparison.csv, paired_differences.csv")
    return 0


if __name__ == "__main__":
    main()
