"""The label-efficiency sweep's report: table in the paper's form, paired differences, plot.

Used by ``benchmarks/label_efficiency.py``; the functions take the long table of runs (one row per
method, fraction, fold and seed with its Dice in ``[0, 1]``) and return or write the report parts.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fpnunet.atomic import atomic_path, load_json

PAPER = {  # Morano et al. 2023, GA-S, Dice % at label ratio 0.05 / 0.1 / 0.2 / 1.0 (their Table 1)
    "IPN": (71.45, 82.44, 86.03, 90.26), "IPNv2": (74.22, 84.90, 87.63, 91.57),
    "Lachinov et al.": (73.46, 86.89, 90.20, 92.89), "ReSensNet": (78.47, 83.81, 89.94, 92.70),
    "FPN": (79.90, 84.51, 90.90, 93.15), "FPN + SLO SSL": (88.36, 91.40, 91.48, 92.93),
    "FPN + FAF SSL": (90.47, 91.61, 92.21, 93.15),
}


def read_dice(fold: Path) -> float:
    """Mean foreground Dice of a fold's final validation (``validation/summary.json``)."""
    summary = load_json(fold / "validation" / "summary.json")
    return float(summary["foreground_mean"]["Dice"])


def summarise(runs: pd.DataFrame, order: list[str], fractions: list[float]) -> pd.DataFrame:
    """Long table: one row per (method, fraction) with mean and sample std of Dice (%), and n."""
    rows = []
    for method in order:
        for f in fractions:
            d = runs.loc[(runs["method"] == method) & np.isclose(runs["fraction"].astype(float), f), "dice"]
            d = 100.0 * d.astype(float)
            rows.append({"method": method, "fraction": f, "mean": d.mean() if len(d) else math.nan,
                         "std": d.std(ddof=1) if len(d) > 1 else (0.0 if len(d) else math.nan), "n": len(d)})
    return pd.DataFrame(rows, columns=["method", "fraction", "mean", "std", "n"])


def paired_differences(runs: pd.DataFrame, order: list[str], fractions: list[float]) -> pd.DataFrame:
    """Each method minus the first of ``order`` (FPN from scratch), in Dice points, paired by fold and seed.

    One row per (method, fraction): ``mean`` and sample ``std`` of the per-pair differences, ``n``
    pairs and ``wins`` (pairs where the method scored higher). Pairing removes the fold-to-fold
    spread that both methods share (which validation cases and which labelled cases a fold has).
    """
    rows = []
    reference = order[0]
    keys = ["fold", "seed"] if "seed" in runs.columns else ["fold"]
    for method in order[1:]:
        for f in fractions:
            at = np.isclose(runs["fraction"].astype(float), f)
            a = runs.loc[at & (runs["method"] == method), [*keys, "dice"]]
            b = runs.loc[at & (runs["method"] == reference), [*keys, "dice"]]
            pairs = a.merge(b, on=keys, suffixes=("", "_ref"))
            d = 100.0 * (pairs["dice"].astype(float) - pairs["dice_ref"].astype(float))
            rows.append({"method": method, "reference": reference, "fraction": f,
                         "mean": d.mean() if len(d) else math.nan,
                         "std": d.std(ddof=1) if len(d) > 1 else (0.0 if len(d) else math.nan),
                         "n": len(d), "wins": int((d > 0).sum())})
    return pd.DataFrame(rows, columns=["method", "reference", "fraction", "mean", "std", "n", "wins"])


def render_markdown(table: pd.DataFrame, order: list[str], fractions: list[float], settings: dict[str, Any],
                    missing: int = 0, paired: pd.DataFrame | None = None) -> str:
    """The table in the paper's form (Dice %, mean +- std over folds x seeds), best per column in bold;
    then, when given, the paired differences to the first method."""
    best = {f: table.loc[np.isclose(table["fraction"], f), "mean"].max() for f in fractions}
    lines = ["# Label efficiency on synthetic GA", "",
             f"Dice (%) of whole-volume validation (flip TTA), mean +- std over folds x seeds "
             f"(folds {settings['folds']}, seeds {settings['seeds']}), by share of labelled training cases.", "",
             "| method | " + " | ".join(f"{f:g}" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for method in order:
        cells = []
        for f in fractions:
            r = table[(table["method"] == method) & np.isclose(table["fraction"], f)].iloc[0]
            if r["n"] == 0:
                cells.append("-")
                continue
            cell = f"{r['mean']:.2f} +- {r['std']:.2f}" + (f" (n={r['n']})" if r["n"] == 1 else "")
            cells.append(f"**{cell}**" if np.isclose(r["mean"], best[f]) else cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if paired is not None and len(paired):
        lines += ["", f"Difference to {paired['reference'].iloc[0]} on the same fold and seed (Dice points, "
                      "mean +- std over pairs; wins / pairs):", "",
                  "| method | " + " | ".join(f"{f:g}" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for method in order[1:]:
            cells = []
            for f in fractions:
                r = paired[(paired["method"] == method) & np.isclose(paired["fraction"], f)]
                if not len(r) or r.iloc[0]["n"] == 0:
                    cells.append("-")
                    continue
                r = r.iloc[0]
                cells.append(f"{r['mean']:+.2f} +- {r['std']:.2f} ({r['wins']}/{r['n']})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", f"{missing} run(s) of the sweep are not finished yet and are not counted."]
    lines += ["", "Reference, Morano et al. 2023 (GA-S, Dice % at 0.05 / 0.1 / 0.2 / 1.0): "
              + "; ".join(f"{k} {' / '.join(f'{v:.2f}' for v in vals)}" for k, vals in PAPER.items()
                          if k in order), "",
              "## Settings", "", "```", settings["command"], "```", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items() if k != "command"]
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, order: list[str], path: Path) -> None:
    """Dice (%) against label fraction (log axis), one line with error bars per method (nnU-Net's dashed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    for method in order:
        t = table[(table["method"] == method) & (table["n"] > 0)].sort_values("fraction")
        if len(t):
            ax.errorbar(t["fraction"], t["mean"], yerr=t["std"].fillna(0.0), marker="o", capsize=3, label=method,
                        linestyle="--" if method.startswith("nnU-Net") else "-")  # another tool: dashed
    fractions = sorted(table["fraction"].unique())
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{f:g}" for f in fractions])
    ax.set_xlabel("share of labelled training cases")
    ax.set_ylabel("Dice (%)")
    ax.set_title("Label efficiency (synthetic GA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
