"""How a run reports its progress: the per-epoch log ``training_log.csv`` (pandas), ``progress.png``
(matplotlib, Agg) and the run's clock (:class:`RunClock`: the ETA and the heartbeat).

Both files are rewritten atomically after every epoch, so they are always complete and can be
opened while training runs. Columns are ``epoch`` (1-based count of completed epochs),
``train_loss``, the task's validation columns (``val_loss``, ``val_dice`` for segmentation),
``lr`` and ``epoch_time_s``; epochs without validation leave the validation columns empty.

``progress.png`` has a title (dataset, configuration = the model folder, fold, trainer) and three
panels: losses (every column ending in ``loss``), the other validation metrics (e.g. whole-volume
Dice) with the final validation with flip TTA (``validation/summary.json``) marked as a star once it
exists, and the learning rate. Axes never stretch a tiny change over their whole height: a
validation metric in [0, 1] spans at least :data:`MIN_METRIC_SPAN`, a loss at least
:data:`MIN_LOSS_SPAN` of its largest value.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fpnunet.atomic import atomic_path

CSV_NAME = "training_log.csv"
PLOT_NAME = "progress.png"
FINAL_SUMMARY = "validation/summary.json"
MIN_METRIC_SPAN = 0.2
MIN_LOSS_SPAN = 0.25


def default_title(folder: str | Path, trainer: str | None = None) -> str:
    """``Dataset901_DemoGA | fpn__lf1__ssl-FAF | fold_0 | trainer segmentation`` from a fold folder
    ``.../DATASET/MODEL/fold_X`` (the model folder name holds configuration, label fraction and
    pretraining)."""
    folder = Path(folder).absolute()
    parts = [folder.parent.parent.name, folder.parent.name, folder.name]
    if trainer:
        parts.append(f"trainer {trainer}")
    return " | ".join(p for p in parts if p)


def final_validation(folder: str | Path) -> dict[str, Any] | None:
    """``{"dice", "checkpoint", "tta", "cases"}`` of the fold's final validation
    (``validation/summary.json``), or ``None`` when there is none (yet) or it is unreadable."""
    path = Path(folder) / FINAL_SUMMARY
    try:
        with open(path) as f:
            s = json.load(f)
        dice = s["foreground_mean"]["Dice"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if dice is None:
        return None
    return {"dice": float(dice), "checkpoint": s.get("checkpoint", ""), "tta": bool(s.get("tta", False)),
            "cases": int(s.get("num_cases", 0)), "epoch": s.get("epoch")}


def redraw_progress(folder: str | Path, trainer: str | None = None) -> Path | None:
    """Redraw ``progress.png`` from ``training_log.csv`` (after the final validation); ``None``
    when there is no log."""
    folder = Path(folder)
    try:
        df = pd.read_csv(folder / CSV_NAME)
    except (OSError, ValueError):
        return None
    cols = list(df.columns)
    metric_columns = [c for c in cols if c not in ("epoch", "train_loss", "lr", "epoch_time_s")]
    with atomic_path(folder / PLOT_NAME, suffix=".png") as tmp:
        draw_progress(df, metric_columns, tmp, title=default_title(folder, trainer),
                      final=final_validation(folder))
    return folder / PLOT_NAME


class TrainingLogger:
    """Collects one record (dict) per epoch and redraws the csv and the plot.

    Args:
        folder: where ``training_log.csv`` and ``progress.png`` go.
        metric_columns: validation columns, e.g. ``("val_loss", "val_dice")``.
        records: earlier records (a resumed run's checkpoint ``log``).
        plot: draw ``progress.png`` (off only for speed in tests of other parts).
        trainer: the trainer's name for the plot's title.
    """

    def __init__(self, folder: str | Path, metric_columns: Sequence[str], records: Sequence[dict] = (),
                 plot: bool = True, trainer: str | None = None) -> None:
        self.folder = Path(folder)
        self.columns = ["epoch", "train_loss", *metric_columns, "lr", "epoch_time_s"]
        self.metric_columns = list(metric_columns)
        self.records: list[dict[str, Any]] = [dict(r) for r in records]
        self.plot = plot
        self.trainer = trainer

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
                draw_progress(df, self.metric_columns, tmp, title=default_title(self.folder, self.trainer),
                              final=final_validation(self.folder))


def _span(values: np.ndarray, min_span: float, lo: float = -math.inf, hi: float = math.inf) -> tuple[float, float]:
    """Axis limits around ``values``, at least ``min_span`` wide, inside ``[lo, hi]``."""
    vmin, vmax = float(np.min(values)), float(np.max(values))
    pad = 0.08 * (vmax - vmin)
    a, b = vmin - pad, vmax + pad
    if b - a < min_span:
        mid = (vmin + vmax) / 2
        a, b = mid - min_span / 2, mid + min_span / 2
    if a < lo:
        a, b = lo, max(b, lo + min_span)
    if b > hi:
        a, b = min(a, hi - min_span), hi
    return max(a, lo), min(b, hi)


def draw_progress(df: pd.DataFrame, metric_columns: Sequence[str], path: str | Path, title: str = "",
                  final: dict[str, Any] | None = None) -> None:
    """Losses, validation metrics (and the final validation with TTA, ``final``) and learning
    rate against the epoch, as one PNG."""
    fig = progress_figure(df, metric_columns, title, final)
    fig.savefig(path, format="png")


def progress_figure(df: pd.DataFrame, metric_columns: Sequence[str], title: str = "",
                    final: dict[str, Any] | None = None) -> Any:
    """The matplotlib Figure of :func:`draw_progress` (for tests and notebooks)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(8, 9.4), dpi=90)
    ax_loss, ax_metric, ax_lr = fig.subplots(3, 1, sharex=True)
    x = df["epoch"]
    for col in ["train_loss", *[c for c in metric_columns if c.endswith("loss")]]:
        y = df[col].astype(float)
        ax_loss.plot(x[y.notna()], y[y.notna()], marker="." if col != "train_loss" or len(x) < 3 else None, label=col)
    ax_loss.set_ylabel("loss")
    losses = df[["train_loss", *[c for c in metric_columns if c.endswith("loss")]]].astype(float).to_numpy()
    positive = losses[np.isfinite(losses) & (losses > 0)]
    if positive.size and positive.max() > 20 * positive.min():
        ax_loss.set_yscale("log")  # one early outlier must not flatten the curves
    elif np.isfinite(losses).any():
        finite = losses[np.isfinite(losses)]
        ax_loss.set_ylim(*_span(finite, MIN_LOSS_SPAN * float(np.abs(finite).max() or 1.0)))
    ax_loss.legend(loc="upper right")
    others = [c for c in metric_columns if not c.endswith("loss")]
    for col in others:
        y = df[col].astype(float)
        ax_metric.plot(x[y.notna()], y[y.notna()], marker="o", label=col)
        if y.notna().any():
            best = y.idxmax()
            ax_metric.annotate(f"best {y[best]:.4f}", (x[best], y[best]), textcoords="offset points",
                               xytext=(0, -14), ha="center", fontsize=8)
    shown = [df[c].astype(float).dropna().to_numpy() for c in others]
    if final is not None:
        fx = float(x.max()) if len(x) else 0.0
        tta = "flip TTA" if final.get("tta") else "no TTA"
        label = f"final validation ({tta}, {final.get('cases', 0)} cases): Dice {final['dice']:.4f}"
        ax_metric.plot([fx], [final["dice"]], marker="*", markersize=14, color="tab:red", linestyle="none",
                       label=label)
        shown.append(np.asarray([final["dice"]]))
    values = np.concatenate(shown) if shown else np.zeros(0)
    values = values[np.isfinite(values)]
    if values.size:
        in_unit = values.min() >= 0 and values.max() <= 1
        ax_metric.set_ylim(*_span(values, MIN_METRIC_SPAN, *((0.0, 1.0) if in_unit else (-math.inf, math.inf))))
    ax_metric.set_ylabel("validation (whole volumes)")
    if others or final is not None:
        ax_metric.legend(loc="lower right", fontsize=8)
    ax_lr.plot(x, df["lr"].astype(float), color="tab:gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    for ax in (ax_loss, ax_metric, ax_lr):
        ax.grid(alpha=0.3)
        if ax.get_yscale() == "linear":
            ax.ticklabel_format(axis="y", useOffset=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- the run's clock ----
# The epoch loop reports every training iteration and every validation (BatchNorm recalibration
# included) to a RunClock; the estimate of what is left is
#     iterations left x (training seconds / iterations so far, loader waits included)
#     + validations left x (mean seconds of the validations so far)
# so it covers epochs x iterations_per_epoch and every val_every validation, not just the current
# epoch. Until the first validation has been timed the estimate says so ("+ N validations"). The
# final validation with flip TTA that fpn_train runs after the loop is not part of it.
def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min 05 s``, ``3 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


@dataclass
class RunClock:
    """Times a run's iterations and validations and estimates the time left.

    Args:
        epochs: the run's epochs.
        iterations_per_epoch: training iterations per epoch.
        validates_at: ``validates_at(epoch)`` for a 0-based epoch (:meth:`RunConfig.validates_at`).
        heartbeat_s: seconds between heartbeat lines (0: none); see :meth:`heartbeat_due`.
        now: the clock (``time.perf_counter``; a test passes a fake one).
    """

    epochs: int
    iterations_per_epoch: int
    validates_at: Callable[[int], bool]
    heartbeat_s: float = 0.0
    now: Callable[[], float] = time.perf_counter
    train_seconds: float = 0.0
    iterations: int = 0
    validation_seconds: list[float] = field(default_factory=list)
    last_output: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_output = self.now()

    def add_iterations(self, seconds: float, count: int = 1) -> None:
        self.train_seconds += seconds
        self.iterations += count

    def add_validation(self, seconds: float) -> None:
        self.validation_seconds.append(seconds)

    def seconds_per_iteration(self) -> float | None:
        return self.train_seconds / self.iterations if self.iterations else None

    def remaining(self, epoch: int, iterations_done: int, validated: bool = False) -> tuple[float | None, int]:
        """``(seconds, untimed_validations)`` left from 0-based ``epoch`` after ``iterations_done`` of
        its iterations (``validated``: the epoch's validation is behind too). ``seconds`` is ``None``
        before the first timed iteration; validations are counted in it once one was timed, else
        returned as ``untimed_validations``."""
        per_it = self.seconds_per_iteration()
        if per_it is None:
            return None, 0
        its = (self.epochs - epoch - 1) * self.iterations_per_epoch + max(0, self.iterations_per_epoch
                                                                        - iterations_done)
        vals = sum(self.validates_at(e) for e in range(epoch + 1, self.epochs))
        if not validated and self.validates_at(epoch):
            vals += 1
        seconds = its * per_it
        if self.validation_seconds:
            return seconds + vals * sum(self.validation_seconds) / len(self.validation_seconds), 0
        return seconds, vals

    def eta_text(self, epoch: int, iterations_done: int, validated: bool = False) -> str:
        """``run ETA 1 h 02 min`` (``+ 3 validations`` while none was timed yet); ``""`` when unknown."""
        seconds, untimed = self.remaining(epoch, iterations_done, validated)
        if seconds is None:
            return ""
        if seconds <= 0 and not untimed:
            return "run ETA 0 s"
        text = f"run ETA {format_duration(seconds)}"
        if untimed:
            text += f" + {untimed} validation{'s' if untimed > 1 else ''}"
        finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
        return f"{text} (about {finish})" if not untimed else text

    def heartbeat_due(self) -> bool:
        """Whether ``heartbeat_s`` passed since the last line printed (:meth:`printed` resets it)."""
        return self.heartbeat_s > 0 and self.now() - self.last_output >= self.heartbeat_s

    def printed(self) -> None:
        self.last_output = self.now()
