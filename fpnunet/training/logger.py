"""Per-epoch training log: ``training_log.csv`` (pandas) and ``progress.png`` (matplotlib, Agg).

Both files are rewritten atomically after every epoch, so they are always complete and can be
opened while training runs. Columns are ``epoch`` (1-based count of completed epochs),
``train_loss``, the task's validation columns (``val_loss``, ``val_dice`` for segmentation),
``lr`` and ``epoch_time_s``; epochs without validation leave the validation columns empty.

``progress.png`` has three panels: losses (every column ending in ``loss``), the other
validation metrics (e.g. whole-volume Dice), and the learning rate.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fpnunet.atomic import atomic_path

CSV_NAME = "training_log.csv"
PLOT_NAME = "progress.png"


class TrainingLogger:
    """Collects one record (dict) per epoch and redraws the csv and the plot.

    Args:
        folder: where ``training_log.csv`` and ``progress.png`` go.
        metric_columns: validation columns, e.g. ``("val_loss", "val_dice")``.
        records: earlier records (a resumed run's checkpoint ``log``).
        plot: draw ``progress.png`` (off only for speed in tests of other parts).
    """

    def __init__(self, folder: str | Path, metric_columns: Sequence[str], records: Sequence[dict] = (),
                 plot: bool = True) -> None:
        self.folder = Path(folder)
        self.columns = ["epoch", "train_loss", *metric_columns, "lr", "epoch_time_s"]
        self.metric_columns = list(metric_columns)
        self.records: list[dict[str, Any]] = [dict(r) for r in records]
        self.plot = plot

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (missing columns become empty) and rewrite both files."""
        self.records.append({c: record.get(c, math.nan) for c in self.columns})
        self.write()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records, columns=self.columns)

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        df = self.frame()
        with atomic_path(self.folder / CSV_NAME, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False)
        if self.plot:
            with atomic_path(self.folder / PLOT_NAME, suffix=".png") as tmp:
                draw_progress(df, self.metric_columns, tmp)


def draw_progress(df: pd.DataFrame, metric_columns: Sequence[str], path: str | Path) -> None:
    """Losses, validation metrics and learning rate against the epoch, as one PNG."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(8, 9), dpi=90)
    ax_loss, ax_metric, ax_lr = fig.subplots(3, 1, sharex=True)
    x = df["epoch"]
    for col in ["train_loss", *[c for c in metric_columns if c.endswith("loss")]]:
        y = df[col].astype(float)
        ax_loss.plot(x[y.notna()], y[y.notna()], marker="." if col != "train_loss" else None, label=col)
    ax_loss.set_ylabel("loss")
    losses = df[["train_loss", *[c for c in metric_columns if c.endswith("loss")]]].astype(float).to_numpy()
    positive = losses[np.isfinite(losses) & (losses > 0)]
    if positive.size and positive.max() > 20 * positive.min():
        ax_loss.set_yscale("log")  # one early outlier must not flatten the curves
    ax_loss.legend(loc="upper right")
    others = [c for c in metric_columns if not c.endswith("loss")]
    for col in others:
        y = df[col].astype(float)
        ax_metric.plot(x[y.notna()], y[y.notna()], marker="o", label=col)
        if y.notna().any():
            best = y.idxmax()
            ax_metric.annotate(f"best {y[best]:.4f}", (x[best], y[best]), textcoords="offset points",
                               xytext=(0, -14), ha="center", fontsize=8)
    ax_metric.set_ylabel("validation (whole volumes)")
    if others:
        ax_metric.legend(loc="lower right")
    ax_lr.plot(x, df["lr"].astype(float), color="tab:gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    for ax in (ax_loss, ax_metric, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
