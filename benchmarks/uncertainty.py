"""Per-case uncertainty on cross-validation, measured end to end on synthetic datasets.

For each dataset (``ID:NAME:SEED:B:D:A``): ``fpn_make_synthetic`` (``--cases`` labelled cases),
``fpn_plan_and_preprocess``, five folds of ``fpn_train`` (short CPU schedule, one thread), then
``fpn_evaluate --crossval --calibrate`` (out-of-fold predictions with the flip members kept
apart: ``MODEL/calibration.json`` and ``crossval_results/uncertainty_per_case.csv``). From the
per-case table it prints, per score, Spearman against 1 - Dice and against the absolute area
error (mm^2), and the share of the worst 10 % of cases caught when the score flags 20 % of them;
and the ECE before/after the fitted temperature.

Besides the scores ``fpn_predict`` writes (``disagreement``, ``entropy``) it rates candidate
scores made from them (``sum``: entropy + disagreement; ``area_spread``: (largest - smallest member
area) / largest member area) and from the out-of-fold members (:func:`member_candidates`:
``entropy_wide``, ``low_peak``). The candidate is *chosen on the first dataset only* (highest
Spearman with 1 - Dice) and reported on the others, so the confirmation is not tuned on the set it
is reported on. Steps whose outputs exist are skipped (rerun to resume).

    OMP_NUM_THREADS=1 python benchmarks/uncertainty.py --root /tmp/s3-27/unc --cases 60 \\
        --datasets 980:UncA:1:16:64:48 981:UncB:2:12:80:64 --out docs/uncertainty/crossval.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fpnunet.calibration_file import CALIBRATION_FILE, UNCERTAINTY_TABLE
from fpnunet.evaluation.calibration import caught_share, flag_threshold, spearman

BIN = Path(sys.executable).parent
FLAG_RATE, WORST = 0.2, 0.1


CANDIDATE_P = 0.2
"""``entropy_wide``: pixels whose flip-averaged probability exceeds this join the entropy's region."""


def candidate_scores(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every score rated: the two ``fpn_predict`` writes, two made from its columns and, when the
    table has them (:func:`member_candidates`), two more made from the members."""
    high, low = df["area_high_mm2"].to_numpy(), df["area_low_mm2"].to_numpy()
    spread = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)
    out = {"disagreement": df["disagreement"].to_numpy(), "entropy": df["entropy"].to_numpy(),
           "sum": (df["entropy"] + df["disagreement"]).to_numpy(), "area_spread": spread}
    out.update({c: df[c].to_numpy() for c in ("entropy_wide", "low_peak") if c in df})
    return out


def member_candidates(model_dir: Path, did: str, temperature: float) -> pd.DataFrame:
    """Scores the per-case table lacks, from the out-of-fold members (predicted again):
    ``entropy_wide`` (``entropy`` over the lesion, its band *and* every pixel above
    :data:`CANDIDATE_P`, so a lesion every member misses still counts) and ``low_peak`` (1 - the
    largest flip-averaged probability: nothing in the case is called with confidence)."""
    from scipy import ndimage

    from fpnunet.evaluation.uncertainty import crossval_members
    from fpnunet.inference.ensemble_scores import BAND_PX, apply_temperature, member_masks

    cases, _ = crossval_members(model_dir, did, range(5))
    rows = []
    for c in cases:
        mean = apply_temperature(c.members.mean((0, 1)), temperature)  # (K, B, A)
        fg = mean[0] if mean.shape[0] == 1 else 1 - mean[0]
        region = member_masks(c.members[0], 0 if mean.shape[0] == 1 else 1).any(0) | (fg > CANDIDATE_P)
        region = ndimage.binary_dilation(region, iterations=BAND_PX)
        p = np.clip(fg, 1e-6, 1 - 1e-6)
        ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        rows.append({"case": c.case, "entropy_wide": float(ent[region].mean()) if region.any() else 0.0,
                     "low_peak": 1.0 - float(fg.max())})
    return pd.DataFrame(rows)


def rate(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per score: Spearman with 1 - Dice and with |area error|, worst 10 % caught at a 20 % flag rate."""
    err, area = df["one_minus_dice"].to_numpy(), df["area_abs_error_mm2"].to_numpy()
    out = {}
    for name, s in candidate_scores(df).items():
        out[name] = {"rho_dice": spearman(s, err), "rho_area": spearman(s, area),
                     "caught": caught_share(s, err, flag_threshold(s, FLAG_RATE), WORST)}
    return out


def _sh(argv: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def run_dataset(spec: str, root: Path, args: argparse.Namespace) -> tuple[str, pd.DataFrame, dict]:
    """Make, preprocess, train five folds and calibrate one dataset; its per-case table and calibration."""
    did, name, seed, b, d, a = spec.split(":")
    env = {**os.environ, "FPN_RAW": str(root / "raw"), "FPN_PREPROCESSED": str(root / "pre"),
           "FPN_RESULTS": str(root / "results"), "OMP_NUM_THREADS": "1", "FPN_N_PROC_DA": "1"}
    log = root / f"log_{did}.txt"
    root.mkdir(parents=True, exist_ok=True)
    raw = root / "raw" / f"Dataset{did}_{name}"
    if not (raw / "dataset.json").is_file():
        _sh([str(BIN / "fpn_make_synthetic"), "-o", str(raw), "-n", str(args.cases), "--seed", seed,
             "--shape", b, d, a, "--num-test", "2", "--no-progress"], env, log)
    if not (root / "pre" / raw.name).is_dir():
        _sh([str(BIN / "fpn_plan_and_preprocess"), "-d", did, "-np", "1", "--no-progress"], env, log)
    for fold in range(5):
        if not list((root / "results" / raw.name).glob(f"*/fold_{fold}/validation/summary.json")):
            _sh([str(BIN / "fpn_train"), did, str(fold), "--device", "cpu", "--epochs", str(args.epochs),
                 "--iterations-per-epoch", str(args.iterations_per_epoch), "--val-every", str(args.epochs),
                 "--no-progress", "--num-workers", "1", "--seed", "0", "--pretrained", "none"], env, log)
    if not list((root / "results" / raw.name).glob(f"*/{CALIBRATION_FILE}")):
        _sh([str(BIN / "fpn_evaluate"), "--crossval", "-d", did, "--calibrate", "--device", "cpu",
             "--flag-rate", str(FLAG_RATE)], env, log)
    (cal,) = (root / "results" / raw.name).glob(f"*/{CALIBRATION_FILE}")
    calibration = json.loads(cal.read_text())
    extra = root / f"candidates_{did}.csv"
    if not extra.is_file():
        os.environ.update({k: env[k] for k in ("FPN_RAW", "FPN_PREPROCESSED", "FPN_RESULTS")})
        member_candidates(cal.parent, did, calibration["temperature"]).to_csv(extra, index=False)
    df = pd.read_csv(cal.parent / "crossval_results" / UNCERTAINTY_TABLE).merge(pd.read_csv(extra), on="case")
    return f"{did} ({b} x {d} x {a})", df, calibration


def table(results: list[tuple[str, pd.DataFrame, dict]]) -> str:
    """The markdown table: per dataset and score, and which candidate the first dataset chose."""
    rated = [rate(df) for _, df, _ in results]
    chosen = max(rated[0], key=lambda s: -np.inf if np.isnan(rated[0][s]["rho_dice"]) else rated[0][s]["rho_dice"])
    lines = [f"candidate chosen on {results[0][0]} (highest Spearman with 1 - Dice): `{chosen}`", "",
             "| dataset | cases | mean Dice | score | Spearman 1 - Dice | Spearman abs area error | "
             f"worst {WORST:.0%} caught at {FLAG_RATE:.0%} flagged |", "|---|---|---|---|---|---|---|"]
    for (label, df, _), r in zip(results, rated):
        worst = max(1, int(np.ceil(WORST * len(df))))
        for s, v in r.items():
            mark = " (chosen on the first)" if s == chosen else ""
            lines.append(f"| {label} | {len(df)} | {df['dice'].mean():.3f} | `{s}`{mark} | {v['rho_dice']:.2f} | "
                         f"{v['rho_area']:.2f} | {v['caught']:.0%} ({round(v['caught'] * worst)} of {worst}) |")
    lines += ["", "| dataset | temperature | ECE before | ECE after | flag score (fpn_evaluate) | "
              "reference area in the member interval |", "|---|---|---|---|---|---|"]
    for label, df, cal in results:
        lines.append(f"| {label} | {cal['temperature']:.2f} | {cal['ece_before']:.4f} | {cal['ece_after']:.4f} | "
                     f"`{cal['qc_score']}` > {cal['qc_threshold']:.3f} | {df['ref_in_area_interval'].mean():.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/s3-27/unc", help="data roots (raw, pre, results) go under it")
    p.add_argument("--datasets", nargs="+", default=["980:UncA:1:16:64:48", "981:UncB:2:12:80:64"],
                   help="ID:NAME:SEED:B:D:A per dataset; the first chooses the candidate score")
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iterations-per-epoch", type=int, default=15)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    start = time.time()
    results = [run_dataset(spec, Path(args.root), args) for spec in args.datasets]
    text = table(results) + f"\nwall {time.time() - start:.0f} s\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
