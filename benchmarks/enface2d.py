"""plane2d (the en-face-input configuration planned as 2D) against nnU-Net v2 2D, and fpnunet's
volume-only FPN against nnU-Net on the projection (docs/label_efficiency/enface2d.md).

Per dataset (planned with ``-c fpn plane2d``), label fraction and fold:

* nnU-Net v2 2D on the mean projection + the en-face images, and on the projection alone
  (``benchmarks/nnunet_projection.py``: fpnunet's own folds, nnU-Net's shipped short trainer;
  ``nnUNetTrainer_1epoch`` = 250 iterations at the batch of its plan);
* ``plane2d`` with every en-face modality as input (the ``plane2d-enface`` candidate) trained on
  as many samples as nnU-Net saw (``--epochs`` x iterations x batch = 250 x nnU-Net's batch), and
  again for as long as nnU-Net took on this CPU (its steps scaled by nnU-Net's seconds over its
  own, when that gives at least 30 % more steps; else the equal-samples run stands for both);
* ``fpn`` from scratch (weight decay 5e-2, the scratch candidate) on the same number of samples.

Dice is the mean foreground Dice of the fold's validation cases (each tool's own final
validation with flip TTA), evaluated by fpnunet's evaluator. Runs are kept in ``runs.csv`` under
``--out`` and skipped when done, so the command resumes; the table is printed and written to
``enface2d.md`` there.

Usage (``FPN_RAW``/``FPN_PREPROCESSED``/``FPN_RESULTS`` set, datasets planned)::

    python benchmarks/enface2d.py -d 960 961 --fractions 0.05 0.2 1 --folds 0 \\
        --nnunet-bin /opt/nnunet-venv/bin --out /tmp/enface2d
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from fpnunet.atomic import write_atomic
from fpnunet.paths import preprocessed_root, resolve_dataset, results_root
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.results_layout import VALIDATION_DIR

NNUNET_ITERATIONS = 250
"""Iterations of one nnU-Net epoch (``nnUNetTrainer_1epoch``: one epoch)."""
COLUMNS = ["dataset", "method", "fraction", "fold", "dice", "samples", "seconds"]
METHODS = {
    "nnunet-enface": "nnU-Net v2 2D, projection + en-face",
    "plane2d-samples": "fpnunet plane2d + en-face, equal samples",
    "plane2d-time": "fpnunet plane2d + en-face, equal time",
    "nnunet-proj": "nnU-Net v2 2D, projection",
    "fpn-scratch": "fpnunet FPN scratch (volume only), equal samples",
}


def nnunet_runs(args: argparse.Namespace, dataset: str, index: int, out: Path) -> pd.DataFrame:
    """nnU-Net's two variants for ``dataset`` (resumable), as rows of :data:`COLUMNS`."""
    sub = out / f"nnunet_{dataset}"
    cmd = [sys.executable, str(Path(__file__).with_name("nnunet_projection.py")), "-d", dataset, "-c", "plane2d",
           "--folds", *map(str, args.folds), "--fractions", *map(str, args.fractions), "--trainer", args.trainer,
           "--nnunet-id", str(args.nnunet_id + 2 * index), "--variants", *args.nnunet_variants,
           "--out", str(sub)]
    cmd += ["--nnunet-bin", args.nnunet_bin] if args.nnunet_bin else []
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    runs = pd.read_csv(sub / "runs.csv")
    batch = nnunet_batch(results_root() / f"nnunet_projection_{dataset}")
    method = {"proj+enface": "nnunet-enface", "proj": "nnunet-proj"}
    return pd.DataFrame([{"dataset": dataset, "method": method[r.variant], "fraction": r.fraction, "fold": r.fold,
                          "dice": r.dice,
                          "samples": NNUNET_ITERATIONS * batch * epochs_of(args.trainer), "seconds": r.seconds}
                         for r in runs.itertuples()])


def epochs_of(trainer: str) -> int:
    """Epochs of a shipped ``nnUNetTrainer_Nepochs`` (1000 for ``nnUNetTrainer``)."""
    tail = trainer.removeprefix("nnUNetTrainer_").removesuffix("epochs").removesuffix("epoch")
    return int(tail) if tail.isdigit() else 1000


def nnunet_batch(work: Path) -> int:
    """The 2D batch size of nnU-Net's plan (the first ``nnUNetPlans.json`` under ``work``)."""
    plan = next((work / "nnUNet_preprocessed").glob("*/nnUNetPlans.json"))
    return int(json.loads(plan.read_text())["configurations"]["2d"]["batch_size"])


def fpn_train(dataset: str, fraction: float, fold: int, config: str, steps: int, batch: int, results: Path,
              extra: list[str]) -> tuple[float, float]:
    """Train one fold for ``steps`` iterations (10 epochs when possible) into ``results``:
    ``(validation Dice, seconds)``."""
    epochs = min(10, steps)
    iterations = math.ceil(steps / epochs)
    cmd = ["fpn_train", dataset, str(fold), "-c", config, "--label-fraction", f"{fraction:g}", "--epochs", str(epochs),
           "--iterations-per-epoch", str(iterations), "--val-every", str(epochs), "--batch-size", str(batch),
           "--num-workers", "0", "--device", "cpu", "--no-progress", "--overwrite", *extra]
    env = {**os.environ, "FPN_RESULTS": str(results)}
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"fpn_train failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary = next((results / dataset).glob(f"{config}__lf{fraction:g}__*/fold_{fold}/{VALIDATION_DIR}/summary.json"))
    return float(json.loads(summary.read_text())["foreground_mean"]["Dice"]), seconds


def run(args: argparse.Namespace) -> pd.DataFrame:
    out = Path(args.out)
    runs_file = out / "runs.csv"
    done = pd.read_csv(runs_file) if runs_file.is_file() else pd.DataFrame(columns=COLUMNS)

    def record(row: dict) -> None:
        nonlocal done
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(runs_file, lambda tmp, table=done: table.to_csv(tmp, index=False), suffix=".csv")
        print(f"  {row['method']} {row['fraction']:g} fold {row['fold']}: Dice {100 * row['dice']:.1f} "
              f"({row['samples']} samples, {row['seconds']:.0f} s)", flush=True)

    def have(dataset: str, method: str, fraction: float, fold: int) -> pd.Series | None:
        hit = done[(done.dataset == dataset) & (done.method == method) & (done.fraction == fraction)
                   & (done.fold == fold)]
        return None if hit.empty else hit.iloc[0]

    for index, given in enumerate(args.datasets):
        dataset = resolve_dataset(given)
        plan = Plan.load(plans_file(preprocessed_root() / dataset))
        for row in nnunet_runs(args, dataset, index, out).to_dict("records"):
            if have(dataset, row["method"], row["fraction"], row["fold"]) is None:
                record(row)
        for fraction in args.fractions:
            for fold in args.folds:
                nn = have(dataset, "nnunet-enface", fraction, fold)
                samples = int(nn["samples"])
                b2d = plan.configuration("plane2d").batch_size
                steps = math.ceil(samples / b2d)
                if have(dataset, "plane2d-samples", fraction, fold) is None:
                    dice, sec = fpn_train(dataset, fraction, fold, "plane2d", steps, b2d, out / "res_samples",
                                          ["--enface-inputs", "all"])
                    record({"dataset": dataset, "method": "plane2d-samples", "fraction": fraction, "fold": fold,
                            "dice": dice, "samples": steps * b2d, "seconds": round(sec, 1)})
                own = have(dataset, "plane2d-samples", fraction, fold)
                if have(dataset, "plane2d-time", fraction, fold) is None:
                    scaled = int(steps * min(args.max_time_scale, float(nn["seconds"]) / float(own["seconds"])))
                    if scaled >= 1.3 * steps:
                        dice, sec = fpn_train(dataset, fraction, fold, "plane2d", scaled, b2d, out / "res_time",
                                              ["--enface-inputs", "all"])
                        row = {"samples": scaled * b2d, "dice": dice, "seconds": round(sec, 1)}
                    else:
                        row = {"samples": int(own["samples"]), "dice": float(own["dice"]),
                               "seconds": float(own["seconds"])}
                    record({"dataset": dataset, "method": "plane2d-time", "fraction": fraction, "fold": fold, **row})
                if not args.skip_fpn and have(dataset, "fpn-scratch", fraction, fold) is None:
                    bf = plan.configuration("fpn").batch_size
                    fsteps = math.ceil(samples / bf)
                    dice, sec = fpn_train(dataset, fraction, fold, "fpn", fsteps, bf, out / "res_fpn",
                                          ["--weight-decay", "0.05", "--pretrained", "none"])
                    record({"dataset": dataset, "method": "fpn-scratch", "fraction": fraction, "fold": fold,
                            "dice": dice, "samples": fsteps * bf, "seconds": round(sec, 1)})
    return done


PAIRS = (("plane2d-samples", "nnunet-enface"), ("plane2d-time", "nnunet-enface"), ("fpn-scratch", "nnunet-proj"))
"""fpnunet method - nnU-Net reference, paired by dataset, fraction and fold."""


def paired(done: pd.DataFrame) -> str:
    """Per dataset and fraction: each pair's Dice difference (points) over the folds both ran,
    mean +- sd and the folds fpnunet won."""
    lines = ["| dataset | labels | fpnunet - nnU-Net | folds | mean +- sd | folds won |", "|---|---|---|---|---|---|"]
    wide = done.pivot_table(index=["dataset", "fraction", "fold"], columns="method", values="dice")
    for (dataset, fraction), g in wide.groupby(level=[0, 1]):
        for ours, ref in PAIRS:
            if ours not in g or ref not in g:
                continue
            d = 100 * (g[ours] - g[ref]).dropna()
            if len(d):
                sd = f" +- {d.std():.1f}" if len(d) > 1 else ""
                pair = f"{METHODS.get(ours, ours)} - {METHODS.get(ref, ref)}"
                lines.append(f"| {dataset} | {100 * fraction:g} % | {pair} | {len(d)} | {d.mean():+.1f}{sd} "
                             f"| {int((d > 0).sum())} |")
    return "\n".join(lines)


def table(done: pd.DataFrame, argv: list[str]) -> str:
    """Mean Dice % (over folds) per dataset, method and fraction, with samples and seconds."""
    lines = ["```", shlex.join(["python", "benchmarks/enface2d.py", *argv]), "```", "",
             "| dataset | method | " + " | ".join(f"{100 * f:g} % labels" for f in sorted(done.fraction.unique()))
             + " | folds | samples | s (mean) |", "|---" * (5 + done.fraction.nunique()) + "|"]
    for (dataset, method), g in done.groupby(["dataset", "method"], sort=False):
        cells = []
        for f in sorted(done.fraction.unique()):
            h = g[g.fraction == f]
            cells.append(f"{100 * h.dice.mean():.1f}" if len(h) else "-")
        lines.append(f"| {dataset} | {METHODS.get(method, method)} | " + " | ".join(cells)
                     + f" | {g.fold.nunique()} | {int(g.samples.median())} | {g.seconds.mean():.0f} |")
    return "\n".join(lines) + "\n\n" + paired(done)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--datasets", nargs="+", help="dataset ids, planned with -c fpn plane2d")
    p.add_argument("--report-only", nargs="+", metavar="RUNS_CSV", help="print the tables of these runs.csv files "
                                                                      "(earlier runs) and run nothing")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2, 1.0])
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--trainer", default="nnUNetTrainer_1epoch", help="nnU-Net trainer (default nnUNetTrainer_1epoch)")
    p.add_argument("--nnunet-bin", default=None, help="folder with nnU-Net's console scripts")
    p.add_argument("--nnunet-id", type=int, default=760, help="nnU-Net dataset id of the first variant")
    p.add_argument("--nnunet-variants", nargs="+", default=["proj+enface", "proj"], choices=["proj+enface", "proj"],
                   help="nnU-Net inputs to run (default both; earlier runs of the other are kept)")
    p.add_argument("--max-time-scale", type=float, default=4.0, help="cap of the equal-time step scaling")
    p.add_argument("--skip-fpn", action="store_true", help="leave out the volume-only FPN runs")
    p.add_argument("--out", default="/tmp/enface2d", help="runs.csv and enface2d.md")
    args = p.parse_args(argv)
    if args.report_only:
        runs = pd.concat([pd.read_csv(f) for f in args.report_only], ignore_index=True)
        print(table(runs.drop_duplicates(["dataset", "method", "fraction", "fold"]), argv))  # files may share runs
        return 0
    if not args.datasets:
        p.error("-d/--datasets is required (or --report-only RUNS_CSV ...)")
    done = run(args)
    text = table(done, argv)
    write_atomic(Path(args.out) / "enface2d.md", lambda tmp: tmp.write_text(text + "\n"), suffix=".md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
