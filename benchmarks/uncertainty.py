"""Per-case uncertainty on cross-validation, measured end to end on synthetic datasets.

For each dataset (``ID:NAME:SEED:B:D:A``): ``fpn_make_synthetic`` (``--cases`` labelled cases),
``fpn_plan_and_preprocess``, five folds of ``fpn_train`` (short CPU schedule, one thread), then
``fpn_evaluate --crossval --calibrate`` (out-of-fold predictions with the flip members kept
apart: ``MODEL/calibration.json`` and ``crossval_results/uncertainty_per_case.csv``). From the
per-case table it prints, per score, Spearman against 1 - Dice and against the absolute area
error (mm^2), and the share of the worst 10 % of cases caught when the score flags 20 % of them;
and the ECE before/after the fitted temperature.

Every score is rated on the out-of-fold members ``fpn_evaluate --calibrate`` keeps
(``crossval_results/members/``), so ``--report-only`` rates new scores without training or
predicting again. The scores: the two ``fpn_predict`` writes (``disagreement``, ``entropy``), two
made from its columns (``sum``: entropy + disagreement; ``area_spread``: (largest - smallest member
area) / largest member area), four made from the members (:func:`member_candidates`) and four rank
combinations (:func:`candidate_scores`).

Protocol, fixed before the figures were seen: the score is *chosen on the selection datasets*
(``--datasets``) by :func:`choose` (highest smallest Spearman with 1 - Dice over them) and the goals
(Spearman >= 0.5, >= 70 % of the worst 10 % caught at a 20 % flag rate) are checked on the
confirmation datasets (``--confirm``), which were never used to choose. Steps whose outputs exist
are skipped (rerun to resume).

    OMP_NUM_THREADS=1 python benchmarks/uncertainty.py --root /tmp/s4-27/unc --cases 60 \\
        --datasets 980:UncA:1:16:64:48 981:UncB:2:12:80:64 --confirm 982:UncC:3:16:80:56 \\
        --out docs/uncertainty/crossval.md
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
"""Probability above which a pixel counts as "almost lesion" for ``entropy_wide``."""
PARTNERS = ("near_miss", "soft_gap")
"""Scores combined with ``disagreement`` by rank (``rank_mean_*``, ``rank_max_*``)."""


def _fold_scores(p: np.ndarray, region: np.ndarray, hard: np.ndarray) -> dict[str, float]:
    """Member-made candidates of one class of one fold: ``p`` its flip-averaged calibrated probability
    ``(B, A)``, ``region`` every pixel any flip member calls lesion, ``hard`` the fold's mask."""
    from scipy import ndimage

    from fpnunet.inference.ensemble_scores import BAND_PX, entropy_bits, near_miss

    wide = ndimage.binary_dilation(region | (p > CANDIDATE_P), iterations=BAND_PX)
    ent = entropy_bits(p)
    soft, area = float(p.sum()), int(hard.sum())
    return {"entropy_wide": float(ent[wide].mean()) if wide.any() else 0.0, "low_peak": 1.0 - float(p.max()),
            "near_miss": near_miss(p, hard), "soft_gap": abs(soft - area) / max(soft, area, 1.0)}


def member_candidates(crossval_dir: Path, cases: list[str], temperature: float) -> pd.DataFrame:
    """Scores the per-case table lacks, from the out-of-fold members ``fpn_evaluate --calibrate`` kept
    (per fold and class, then averaged like ``fpn_predict``'s scores):

    * ``entropy_wide``: ``entropy`` over the lesion, its band *and* every pixel above
      :data:`CANDIDATE_P` (a lesion every member misses still counts);
    * ``low_peak``: 1 - the largest flip-averaged probability (nothing is called with confidence);
    * ``near_miss`` (:func:`fpnunet.inference.ensemble_scores.near_miss`, p > 0.2 there too): the share
      of the "almost lesion" area that the fold's mask leaves out -- a lesion every member *almost*
      found is all near miss, a confident one only its rim;
    * ``soft_gap``: |soft area sum(p) - hard area| / the larger of the two: probability mass the
      hard mask drops (or adds)."""
    from fpnunet.inference.ensemble_scores import apply_temperature, member_masks
    from fpnunet.member_arrays import MemberArrays

    kept = MemberArrays(crossval_dir)
    rows = []
    for case in cases:
        members = kept.read(case)  # (F, T, K, B, A)
        k = members.shape[2]
        fold_probs = apply_temperature(members.mean(1), temperature)  # (F, K, B, A)
        per = [_fold_scores(fold_probs[f, c], member_masks(members[f], c).any(0), member_masks(fold_probs[f], c))
               for f in range(members.shape[0]) for c in ([0] if k == 1 else range(1, k))]
        rows.append({"case": case, **{s: float(np.mean([d[s] for d in per])) for s in per[0]}})
    return pd.DataFrame(rows)


def candidate_scores(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every score rated: the two ``fpn_predict`` writes, two made from its columns, four made from the
    members (:func:`member_candidates`) and four rank combinations of ``disagreement`` with one of
    :data:`PARTNERS` (mean or max of the two scores' ranks among the dataset's cases: the flag then
    catches both members that disagree and a lesion all members miss)."""
    from scipy import stats

    high, low = df["area_high_mm2"].to_numpy(), df["area_low_mm2"].to_numpy()
    spread = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)
    out = {"disagreement": df["disagreement"].to_numpy(), "entropy": df["entropy"].to_numpy(),
           "sum": (df["entropy"] + df["disagreement"]).to_numpy(), "area_spread": spread}
    out.update({c: df[c].to_numpy() for c in ("entropy_wide", "low_peak", *PARTNERS)})
    rank = {s: stats.rankdata(out[s]) / len(df) for s in ("disagreement", *PARTNERS)}
    for s in PARTNERS:
        out[f"rank_mean_{s}"] = (rank["disagreement"] + rank[s]) / 2
        out[f"rank_max_{s}"] = np.maximum(rank["disagreement"], rank[s])
    return out


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
    """Make, preprocess, train five folds and calibrate one dataset (``--report-only``: none of it, the
    outputs must exist); its per-case table with the member-made candidates, and its calibration."""
    did, name, seed, b, d, a = spec.split(":")
    env = {**os.environ, "FPN_RAW": str(root / "raw"), "FPN_PREPROCESSED": str(root / "pre"),
           "FPN_RESULTS": str(root / "results"), "OMP_NUM_THREADS": "1", "FPN_N_PROC_DA": "1"}
    log = root / f"log_{did}.txt"
    raw = root / "raw" / f"Dataset{did}_{name}"
    if not args.report_only:
        root.mkdir(parents=True, exist_ok=True)
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
    found = list((root / "results" / raw.name).glob(f"*/{CALIBRATION_FILE}"))
    if len(found) != 1:
        sys.exit(f"{root / 'results' / raw.name}: expected one calibrated model folder, found {len(found)} "
                 "(run without --report-only first)")
    calibration = json.loads(found[0].read_text())
    crossval = found[0].parent / "crossval_results"
    df = pd.read_csv(crossval / UNCERTAINTY_TABLE)
    extra = member_candidates(crossval, list(df["case"]), calibration["temperature"])
    same = [c for c in extra if c != "case" and c in df]  # written by fpn_evaluate itself: its values are kept
    if same:
        check = df[["case", *same]].merge(extra[["case", *same]], on="case")
        gap = max(float((check[f"{c}_x"] - check[f"{c}_y"]).abs().max()) for c in same)
        print(f"{did}: {', '.join(same)} from the table and from the kept (float16) members differ by <= {gap:.4f}")
    return f"{did} ({b} x {d} x {a})", df.merge(extra.drop(columns=same), on="case"), calibration


def choose(rated: list[dict[str, dict[str, float]]]) -> str:
    """The selection rule, fixed before any figure was seen: the score with the highest *smallest*
    Spearman (score, 1 - Dice) over the selection datasets; a tie goes to the higher mean."""
    def key(s: str) -> tuple[float, float]:
        rho = [r[s]["rho_dice"] for r in rated]
        return (-np.inf, -np.inf) if any(np.isnan(rho)) else (min(rho), float(np.mean(rho)))
    return max(rated[0], key=key)


def table(results: list[tuple[str, pd.DataFrame, dict]], n_select: int) -> str:
    """The markdown tables: per dataset and score, the score chosen on the first ``n_select`` datasets,
    and whether it meets the goals on the others (the confirmation datasets)."""
    rated = [rate(df) for _, df, _ in results]
    chosen = choose(rated[:n_select])
    names = [label for label, _, _ in results]
    lines = [f"selection datasets: {', '.join(names[:n_select])}; confirmation datasets: "
             f"{', '.join(names[n_select:]) or 'none'}",
             f"chosen (highest smallest Spearman with 1 - Dice over the selection datasets): `{chosen}`", "",
             "| dataset | role | cases | mean Dice | score | Spearman 1 - Dice | Spearman abs area error | "
             f"worst {WORST:.0%} caught at {FLAG_RATE:.0%} flagged |", "|---|---|---|---|---|---|---|---|"]
    for i, ((label, df, _), r) in enumerate(zip(results, rated)):
        worst = max(1, int(np.ceil(WORST * len(df))))
        role = "select" if i < n_select else "confirm"
        for s, v in r.items():
            mark = " **(chosen)**" if s == chosen else ""
            lines.append(f"| {label} | {role} | {len(df)} | {df['dice'].mean():.3f} | `{s}`{mark} | "
                         f"{v['rho_dice']:.2f} | {v['rho_area']:.2f} | "
                         f"{v['caught']:.0%} ({round(v['caught'] * worst)} of {worst}) |")
    lines.append("")
    for label, r in zip(names[n_select:], rated[n_select:]):
        ok = r[chosen]["rho_dice"] >= 0.5 and r[chosen]["caught"] >= 0.7
        lines.append(f"goals on {label} (Spearman >= 0.5, caught >= 70 %): `{chosen}` "
                     f"{r[chosen]['rho_dice']:.2f}, {r[chosen]['caught']:.0%}: {'met' if ok else 'NOT met'}")
    lines += ["", "| dataset | temperature | ECE before | ECE after | flag score (fpn_evaluate) | "
              "reference area in the member interval |", "|---|---|---|---|---|---|"]
    for label, df, cal in results:
        lines.append(f"| {label} | {cal['temperature']:.2f} | {cal['ece_before']:.4f} | {cal['ece_after']:.4f} | "
                     f"`{cal['qc_score']}` > {cal['qc_threshold']:.3f} | {df['ref_in_area_interval'].mean():.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/s4-27/unc", help="data roots (raw, pre, results) go under it")
    p.add_argument("--datasets", nargs="+", default=["980:UncA:1:16:64:48", "981:UncB:2:12:80:64"],
                   help="ID:NAME:SEED:B:D:A per selection dataset (they choose the score)")
    p.add_argument("--confirm", nargs="*", default=["982:UncC:3:16:80:56"],
                   help="ID:NAME:SEED:B:D:A per confirmation dataset (never used to choose)")
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iterations-per-epoch", type=int, default=15)
    p.add_argument("--report-only", action="store_true",
                   help="make, train and predict nothing: rate the scores on the kept out-of-fold members")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    start = time.time()
    results = [run_dataset(spec, Path(args.root), args) for spec in [*args.datasets, *args.confirm]]
    text = table(results, len(args.datasets)) + f"\nwall {time.time() - start:.0f} s\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
