"""Simulated labelling loop: cases chosen by ``fpn_suggest_labels`` against cases chosen at random.

On a labelled synthetic dataset (already planned and preprocessed) a pool of training cases and a
fixed held-out set are drawn per seed. Both methods start from the same ``--start`` labelled cases;
each round trains one fold (the round's labelled cases as ``train``, the held-out set as ``val``,
through the raw dataset's ``splits_final.json``), reads the held-out Dice from
``fold_0/validation/summary.json``, and adds ``--add`` cases: the top of ``fpn_suggest_labels -i``
over the pool's remaining volumes, or a seeded random draw. Paired by seed (same start, same
held-out set, same training seed). Writes ``OUT/active_labelling.csv`` (method, seed, round,
labelled, Dice) and ``OUT/active_labelling.md``.

The run of docs/uncertainty.md (CPU, one thread, about 35 minutes on the shared 2-core machine; the
dataset is benchmarks/uncertainty.py's 60-case dataset 980)::

    FPN_RAW=/tmp/s3-27/unc/raw FPN_PREPROCESSED=/tmp/s3-27/unc/pre python benchmarks/active_labelling.py -d 980 \\
        --seeds 0 1 2 3 --rounds 5 --start 2 --add 2 --heldout 12 --epochs 6 --iterations-per-epoch 15 \\
        --out docs/uncertainty
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fpnunet.paths import preprocessed_dir, raw_dir
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.raw_dataset import images_dir, load_dataset_json, volume_name

BIN = Path(sys.executable).parent


def _sh(argv: list[str], env: dict[str, str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def _train(dataset: str, train: list[str], val: list[str], results: Path, args: argparse.Namespace,
           seed: int, log: Path) -> float:
    splits = raw_dir(dataset) / "splits_final.json"
    splits.write_text(json.dumps([{"train": sorted(train), "val": sorted(val)}]))
    env = {**os.environ, "FPN_RESULTS": str(results), "OMP_NUM_THREADS": "1", "FPN_N_PROC_DA": "1"}
    try:
        _sh([str(BIN / "fpn_train"), dataset, "0", "--device", "cpu", "--epochs", str(args.epochs),
             "--iterations-per-epoch", str(args.iterations_per_epoch), "--val-every", str(args.epochs),
             "--seed", str(seed), "--no-progress", "--pretrained", "none", "--num-workers", "1"], env, log)
    finally:
        splits.unlink(missing_ok=True)
    (summary,) = results.glob("*/*/fold_0/validation/summary.json")
    return float(json.loads(summary.read_text())["foreground_mean"]["Dice"])


def _suggest(dataset: str, pool: list[str], results: Path, work: Path, add: int, log: Path,
             diversity: float) -> list[str]:
    info = load_dataset_json(raw_dir(dataset))
    folder = work / "candidates"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in pool:
        name = volume_name(case, info.file_ending)
        (folder / name).symlink_to(images_dir(raw_dir(dataset)) / name)
    (model,) = results.glob("*/*/fold_0")
    out = work / "suggestions"
    env = {**os.environ, "FPN_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    _sh([str(BIN / "fpn_suggest_labels"), "-d", dataset, "-m", str(model.parent), "-i", str(folder), "-o", str(out),
         "--device", "cpu", "--pictures", "0", "--diversity", str(diversity)], env, log)
    return list(pd.read_csv(out / "suggestions.csv")["case"][:add])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--start", type=int, default=2)
    p.add_argument("--add", type=int, default=2)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iterations-per-epoch", type=int, default=15)
    p.add_argument("--work", default=None, help="default $FPN_PREPROCESSED/../active_labelling")
    p.add_argument("--out", default="docs/uncertainty")
    p.add_argument("--diversity", type=float, default=0.3, help="fpn_suggest_labels --diversity (default 0.3)")
    p.add_argument("--mix", type=int, default=0, metavar="K",
                   help="of each round's --add cases of the suggested arm, K are a seeded random draw from the "
                        "pool's rest (after the suggestions), the others the top of fpn_suggest_labels (default 0)")
    p.add_argument("--methods", nargs="+", choices=["random", "suggested"], default=["random", "suggested"],
                   help="arms to run; the random arm is deterministic, so a stored one can be reused "
                        "(--table-only RANDOM_CSV NEW_CSV)")
    p.add_argument("--table-only", metavar="CSV", nargs="+",
                   help="print the tables of earlier runs' active_labelling.csv files (the suggested arm "
                        "of a later file replaces an earlier one's)")
    args = p.parse_args(argv)
    if not 0 <= args.mix <= args.add:
        p.error(f"--mix {args.mix}: must be between 0 and --add ({args.add})")
    if args.table_only:
        df = combine([pd.read_csv(f) for f in args.table_only])
        print(report(df))
        return 0
    dataset = args.dataset
    import fpnunet.preprocessed_dataset as ppd  # noqa: PLC0415  (a script: imports where used)

    plan = json.loads(plans_file(preprocessed_dir(dataset)).read_text())
    ident = plan["configurations"][plan.get("default_configuration", "fpn")]["data_identifier"]
    labelled = ppd.PreprocessedDataset.open(preprocessed_dir(dataset) / ident).labelled
    work = Path(args.work or Path(os.environ["FPN_PREPROCESSED"]).parent / "active_labelling")
    rows = []
    for seed in args.seeds:
        rng = random.Random(seed)
        cases = sorted(labelled)
        rng.shuffle(cases)
        heldout, pool = cases[:args.heldout], cases[args.heldout:]
        start = pool[:args.start]
        for method in args.methods:
            chosen = list(start)
            pick = random.Random(1000 + seed)
            for rnd in range(args.rounds + 1):
                run = work / f"seed{seed}" / method / f"round{rnd}"
                if rnd == 0 and method == "suggested" and "random" in args.methods:  # same start: reuse its run
                    shutil.rmtree(run, ignore_errors=True)
                    shutil.copytree(work / f"seed{seed}" / "random" / "round0", run)
                    dice = rows[-args.rounds - 1]["dice"]
                else:
                    shutil.rmtree(run, ignore_errors=True)
                    run.mkdir(parents=True)
                    dice = _train(dataset, chosen, heldout, run / "results", args, seed, run / "log.txt")
                rows.append({"method": method, "seed": seed, "round": rnd, "labelled": len(chosen), "dice": dice})
                print(rows[-1], flush=True)
                pd.DataFrame(rows).to_csv(work / "rows_so_far.csv", index=False)  # a long run's partial result
                if rnd == args.rounds:
                    break
                rest = [c for c in pool if c not in chosen]
                if method == "random":
                    chosen += pick.sample(rest, args.add)
                    continue
                top = _suggest(dataset, rest, run / "results", run, args.add - args.mix, run / "log.txt",
                               args.diversity) if args.add > args.mix else []
                chosen += top + pick.sample([c for c in rest if c not in top], args.mix)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "active_labelling.csv", index=False)
    tables = (report(df) if set(df["method"]) == {"random", "suggested"} else
              "one arm only: print the tables with --table-only RANDOM_CSV THIS_CSV")
    text = (f"# Simulated labelling loop, dataset {dataset}\n\nseeds {args.seeds}, held-out {args.heldout}, start "
            f"{args.start}, +{args.add} per round, {args.rounds} rounds, {args.epochs} epochs x "
            f"{args.iterations_per_epoch} steps, diversity {args.diversity}, random picks mixed in {args.mix}\n\n"
            + tables + "\n")
    (out / "active_labelling.md").write_text(text)
    print(text)
    return 0


def combine(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One table from several runs: per method and seed the last file that has it wins."""
    keep: dict[tuple[str, int], pd.DataFrame] = {}
    for f in frames:
        for key, g in f.groupby(["method", "seed"]):
            keep[(str(key[0]), int(key[1]))] = g
    return pd.concat(list(keep.values()), ignore_index=True)


def report(df: pd.DataFrame) -> str:
    """The paired table, the saving line and the seeds' noise, as a run and ``--table-only`` print them."""
    return paired_table(df) + "\n" + saving(df) + "\n" + noise(df)


def _by_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Dice per (labelled, seed) and method, with the paired difference ``diff`` (suggested - random)."""
    wide = df.pivot_table(index=["labelled", "seed"], columns="method", values="dice")
    wide["diff"] = wide["suggested"] - wide["random"]
    return wide


def paired_table(df: pd.DataFrame) -> str:
    """Mean held-out Dice per round for both methods, and the paired (same seed) difference."""
    wide = _by_seed(df)
    lines = ["| labelled | random | suggested | suggested - random (paired: mean, min..max) | seeds suggested ahead |",
             "|---|---|---|---|---|"]
    for n, g in wide.groupby(level="labelled"):
        lines.append(f"| {n} | {g['random'].mean():.3f} | {g['suggested'].mean():.3f} | {g['diff'].mean():+.3f} "
                     f"({g['diff'].min():+.3f}..{g['diff'].max():+.3f}) | {int((g['diff'] > 0).sum())} of {len(g)} |")
    return "\n".join(lines) + "\n"


def saving(df: pd.DataFrame) -> str:
    """Fewest labelled cases at which the suggested order's mean Dice reaches the random order's
    final mean Dice, and the saving against the random order's final count."""
    mean = df.pivot_table(index="labelled", columns="method", values="dice")
    final_n = int(mean.index.max())
    target = float(mean.loc[final_n, "random"])
    reached = [int(n) for n in mean.index if mean.loc[n, "suggested"] >= target]
    if not reached:
        return (f"random's final mean Dice {target:.3f} ({final_n} cases) is not reached by the suggested order "
                "within the rounds run: no saving shown")
    n = min(reached)
    later = [int(m) for m in mean.index if m >= n]
    stays = all(m in reached for m in later)
    return (f"random's final mean Dice {target:.3f} ({final_n} cases) is reached by the suggested order at {n} "
            f"cases: {1 - n / final_n:.0%} fewer labelled cases (goal: >= 30 %); it "
            + ("stays at or above it with more labels" if stays else
               f"falls below it again at {', '.join(str(m) for m in later if m not in reached)} cases (suggested's "
               f"final mean Dice {float(mean.loc[final_n, 'suggested']):.3f})"))


def noise(df: pd.DataFrame) -> str:
    """How precisely the seeds measure the paired difference (suggested - random) at each labelled
    count, and random's final mean: standard deviation over seeds and standard error."""
    wide = _by_seed(df)
    diff = wide["diff"].groupby(level="labelled")
    final = wide["random"].xs(int(wide.index.get_level_values("labelled").max()), level="labelled")
    parts = [f"{n}: sd {g.std(ddof=1):.3f}, s.e. {g.std(ddof=1) / len(g) ** 0.5:.3f}" for n, g in diff if len(g) > 1]
    return (f"paired difference per labelled count ({'; '.join(parts)}); random's final mean "
            f"{final.mean():.3f} +- {final.std(ddof=1) / len(final) ** 0.5:.3f} (s.e.)")


if __name__ == "__main__":
    sys.exit(main())
