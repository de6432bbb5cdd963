"""The cmc rows of the label-efficiency sweep: CMC against its supervised counterpart, fused
prediction, and robustness to en-face misalignment.

Reads a finished (or partial) ``benchmarks/label_efficiency.py --cmc-networks fpn`` sweep
(``--work``, same ``--dataset-id``/``--fractions``/``--folds``/``--seeds``) and, for every cmc run,
predicts the fold's validation cases three ways from the preprocessed data:

* ``oct``: the OCT branch alone (what ``fpn_predict`` does by default);
* ``fused+s``: OCT + en-face images, the en-face images shifted by ``s`` pixels along the A-scan
  axis (``--shifts``, default 0 4 8; zeros enter at the border) at test time.

Dice is the mean foreground Dice of the whole-volume prediction (no TTA unless ``--tta``) against
the preprocessed label. Output in ``--out`` (default ``docs/label_efficiency/cmc``):
``cmc_fused.csv`` (one row per run), ``cmc_fused.md`` (means +- std, the paired CMC - counterpart
differences read from the sweep's ``runs.csv`` in the same folder, and the fused - OCT
differences per shift). With ``--nnunet-bin`` it also runs nnU-Net v2 2D on the same folds and
fractions (``benchmarks/label_efficiency_nnunet.py``; skipped when the sweep ran it into the same
``--out``), and ``cmc_fused.md`` shows nnU-Net's rows (whenever ``<out>/nnunet/runs.csv`` holds
them) with the fused prediction's paired difference to them.

    python benchmarks/label_efficiency_cmc.py --dataset-id 951 --fractions 0.05 --folds 0 1 --seeds 0
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import DISPLAY  # noqa: E402
from label_efficiency_nnunet import add_arguments, check_arguments, nnunet_runs, run_nnunet  # noqa: E402

from fpnunet.atomic import write_atomic  # noqa: E402
from fpnunet.errors import FPNError  # noqa: E402
from fpnunet.paths import preprocessed_root, results_root  # noqa: E402
from fpnunet.preprocessed_dataset import PreprocessedDataset, plans_file
from fpnunet.training.run_config import saved_settings  # noqa: E402


def evaluate_run(model_dir: Path, fold: int, data_dir: Path, shifts: list[int], tta: bool) -> dict[str, float]:
    from fpnunet.checkpoint import load_checkpoint
    from fpnunet.inference.export import probabilities_to_segmentation
    from fpnunet.inference.fused import model_modalities, predict_fused
    from fpnunet.inference.predictor import Predictor
    from fpnunet.training.cmc.augment import shift_image
    from fpnunet.training.supervised import mean_foreground_dice

    ckpt = load_checkpoint(model_dir / f"fold_{fold}" / "checkpoint_final.pth")
    cases = list(saved_settings(ckpt)["val_cases"])
    predictor = Predictor.from_model_folder(model_dir, folds=[fold], device="cpu", tta=tta)
    mods = model_modalities(predictor)
    labels = predictor.plan.labels
    scores: dict[str, list[float]] = {"oct": [], **{f"fused+{s}": [] for s in shifts}}
    for case in cases:
        volume = np.load(data_dir / f"{case}.npy")
        ref = PreprocessedDataset(data_dir).load_label(case)
        enface = np.stack([np.load(data_dir / f"{case}_{m}.npy") for m in mods]).astype(np.float32)
        seg = probabilities_to_segmentation(predictor.predict_preprocessed(volume), labels=labels)
        scores["oct"].append(mean_foreground_dice(ref, seg, labels))
        for s in shifts:
            moved = shift_image(enface, (0.0, float(s)), order=1) if s else enface
            seg = probabilities_to_segmentation(predict_fused(predictor, volume, moved), labels=labels)
            scores[f"fused+{s}"].append(mean_foreground_dice(ref, seg, labels))
    return {k: float(np.mean(v)) for k, v in scores.items()} | {"cases": len(cases)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset-id", type=int, default=950)
    p.add_argument("--dataset-name", default="SynthGA")
    p.add_argument("--network", default="fpn")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05])
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--shifts", type=int, nargs="+", default=[0, 4, 8])
    p.add_argument("--tta", action="store_true", help="flip TTA (4x slower)")
    p.add_argument("--work", help="the sweep's --work (default $FPN_RESULTS/label_efficiency_DatasetXXX_NAME)")
    p.add_argument("--out", default="docs/label_efficiency/cmc")
    add_arguments(p)
    args = p.parse_args(argv)
    error = check_arguments(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    name = f"Dataset{args.dataset_id:03d}_{args.dataset_name}"
    work = Path(args.work) if args.work else results_root() / f"label_efficiency_{name}"
    out = Path(args.out)
    from fpnunet.plans.plan import Plan

    plan = Plan.load(plans_file(preprocessed_root() / name))
    data_dir = preprocessed_root() / name / plan.configuration(args.network).data_identifier
    rows = []
    for seed in args.seeds:
        for key in sorted(p.name for p in (work / f"seed{seed}").glob("*-cmc")):
            for f in args.fractions:
                for fold in args.folds:
                    found = sorted((work / f"seed{seed}" / key / name).glob(f"{args.network}__lf{f:g}__*__cmc"))
                    if not found or not (found[0] / f"fold_{fold}" / "checkpoint_final.pth").is_file():
                        continue
                    print(f"{key} lf{f:g} fold {fold} seed {seed}", flush=True)
                    scores = evaluate_run(found[0], fold, data_dir, args.shifts, args.tta)
                    pre = key.removesuffix("-cmc")
                    label = DISPLAY.get(args.network, args.network)
                    label += "" if pre == "scratch" else f" + {pre.removeprefix('ssl-')} SSL"
                    rows.append({"method": f"{label} + CMC", "fraction": f, "fold": fold, "seed": seed, **scores})
    if not rows:
        print(f"error: no finished cmc run under {work}", file=sys.stderr)
        return 1
    df = pd.DataFrame(rows)
    if args.nnunet_bin:
        run_nnunet(args, name, args.network, out, work, "auto")
    nnunet = nnunet_runs(out, args.fractions, args.folds, min(args.seeds), args.nnunet_variants)
    text = render(df, args, out, argv, nnunet)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "cmc_fused.csv", lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
    write_atomic(out / "cmc_fused.md", lambda tmp: tmp.write_text(text), suffix=".md")
    print(text)
    return 0


def _pm(values: pd.Series, scale: float = 100.0) -> str:
    v = scale * values.astype(float)
    return f"{v.mean():.2f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.2f} (n={len(v)})"


def render(df: pd.DataFrame, args: argparse.Namespace, out: Path, argv: list[str],
           nnunet: pd.DataFrame | None = None) -> str:
    cols = ["oct"] + [f"fused+{s}" for s in args.shifts]
    lines = ["# CMC: fused prediction and en-face misalignment", "",
             f"`{shlex.join(['python', 'benchmarks/label_efficiency_cmc.py', *argv])}`", "",
             "Mean foreground Dice % of the validation cases (mean +- std over folds x seeds); `fused+s`: "
             "en-face images shifted by s pixels along A at test time. TTA: " + ("flips" if args.tta else "none"), "",
             "| method | fraction | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for (method, f), g in df.groupby(["method", "fraction"], sort=False):
        lines.append(f"| {method} | {f:g} | " + " | ".join(_pm(g[c]) for c in cols) + " |")
    lines += ["", "Fused minus OCT branch, paired per run (Dice points):", "",
              "| method | fraction | " + " | ".join(cols[1:]) + " |", "|---|---|" + "---|" * (len(cols) - 1)]
    for (method, f), g in df.groupby(["method", "fraction"], sort=False):
        lines.append(f"| {method} | {f:g} | " + " | ".join(_pm(g[c] - g["oct"]) for c in cols[1:]) + " |")
    shifted = [c for c in cols[1:] if c != "fused+0"]
    if "fused+0" in cols and shifted:
        lines += ["", "Shifted minus aligned fused prediction, paired per run (Dice points; runs within 2 points):", "",
                  "| method | fraction | " + " | ".join(shifted) + " |", "|---|---|" + "---|" * len(shifted)]
        for (method, f), g in df.groupby(["method", "fraction"], sort=False):
            drops = [g[c] - g["fused+0"] for c in shifted]
            cells = [f"{_pm(d)}, {int((d > -0.02).sum())}/{len(g)}" for d in drops]
            lines.append(f"| {method} | {f:g} | " + " | ".join(cells) + " |")
    runs_csv = out / "runs.csv"
    if runs_csv.is_file():
        runs = pd.read_csv(runs_csv)
        lines += ["", "CMC minus its supervised counterpart on the same fold and seed (sweep's validation Dice, "
                      "OCT branch, flip TTA; Dice points; wins / pairs):", ""]
        for method in sorted(m for m in runs["method"].unique() if m.endswith(" + CMC")):
            base = method.removesuffix(" + CMC")
            for f in sorted(runs["fraction"].unique()):
                a = runs[(runs["method"] == method) & np.isclose(runs["fraction"], f)]
                b = runs[(runs["method"] == base) & np.isclose(runs["fraction"], f)]
                pairs = a.merge(b, on=["fold", "seed"], suffixes=("", "_ref"))
                if len(pairs):
                    d = pairs["dice"] - pairs["dice_ref"]
                    lines.append(f"* {method} - {base} at {f:g}: {_pm(d)}, wins {int((d > 0).sum())}/{len(d)}")
    if nnunet is not None and len(nnunet):
        lines += render_nnunet(df, nnunet)
    return "\n".join(lines) + "\n"


def render_nnunet(df: pd.DataFrame, nnunet: pd.DataFrame) -> list[str]:
    """nnU-Net v2 2D's rows (validation Dice of the same folds and fractions) and the fused prediction
    (en-face images at their place) minus nnU-Net, paired by fold and seed."""
    lines = ["", "nnU-Net v2 2D on the same folds and label fractions (benchmarks/nnunet_projection.py, its own "
                 "validation with mirroring; Dice %, mean +- std over folds):", "",
             "| method | fraction | Dice |", "|---|---|---|"]
    for (method, f), g in nnunet.groupby(["method", "fraction"], sort=False):
        lines.append(f"| {method} | {f:g} | {_pm(g['dice'])} |")
    if "fused+0" not in df.columns:
        return lines
    lines += ["", "Fused prediction (fused+0) minus nnU-Net, paired by fold and seed (Dice points; wins / pairs):", ""]
    for (method, f), g in df.groupby(["method", "fraction"], sort=False):
        for other, h in nnunet[np.isclose(nnunet["fraction"], f)].groupby("method", sort=False):
            pairs = g.merge(h[["fold", "seed", "dice"]], on=["fold", "seed"])
            if len(pairs):
                d = pairs["fused+0"] - pairs["dice"]
                lines.append(f"* {method} - {other} at {f:g}: {_pm(d)}, wins {int((d > 0).sum())}/{len(d)}")
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FPNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
