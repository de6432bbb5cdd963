"""The baseline a clinic without fpnunet would pick: nnU-Net v2 in 2D on en-face projections.

For a planned and preprocessed fpnunet dataset this exports, per variant, the labelled cases as
an nnU-Net v2 raw dataset of 2D images:

* ``proj``: the mean over depth of the preprocessed volume (the retina band fpnunet's networks
  see, z-scored), one nnU-Net channel per volume channel;
* ``proj+enface``: the same plus the dataset's en-face modalities (FAF, SLO) as more channels.

The folds are fpnunet's (``splits_final.json`` of the preprocessed dataset, made by ``fpn_train``
if missing) and each label fraction keeps exactly the training cases ``fpn_train
--label-fraction F`` keeps; every (fraction, fold) becomes one fold of nnU-Net's
``splits_final.json``, so nnU-Net trains and validates on the same cases as the fpnunet runs it
is compared with. Then nnU-Net's own commands run unchanged: ``nnUNetv2_plan_and_preprocess -c 2d``
once per variant and ``nnUNetv2_train ID 2d FOLD -tr TRAINER`` per run (a short-schedule trainer
nnU-Net ships, ``nnUNetTrainer_5epochs`` by default; ``nnUNetTrainer`` is its 1000-epoch default).
nnU-Net's final validation (with its mirroring TTA) predicts the held-out cases, which are scored
against the raw ``labelsTr`` by fpnunet's evaluator (mean foreground Dice, as the sweep of
``benchmarks/label_efficiency.py``).

nnU-Net is never imported: its console scripts are called (from ``--nnunet-bin``, default the
``PATH``). It is the ``[bench]`` extra (``pip install -e '.[bench]'``), never a dependency of
fpnunet. On a CPU-only torch install it in a venv of its own (it pulls timm and torchvision,
which need a torch they were built for) and pass that venv's ``bin``.

Output (``--out``, default ``docs/label_efficiency/nnunet_projection``): ``runs.csv`` (variant,
fraction, fold, Dice, trainer, seconds) and ``nnunet_projection.md`` (mean +- std per variant
and fraction, the command). Finished runs are skipped, so the command resumes.

Usage::

    python benchmarks/nnunet_projection.py -d 951 --folds 0 --fractions 0.05 0.2 1 \\
        --nnunet-bin /opt/nnunet-venv/bin --device cpu --trainer nnUNetTrainer_5epochs
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fpnunet.atomic import load_json, save_json, write_atomic
from fpnunet.errors import FPNError
from fpnunet.evaluation.evaluate import evaluate_folders
from fpnunet.io import write_image
from fpnunet.paths import preprocessed_root, raw_root, resolve_dataset, results_root
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset, plans_file
from fpnunet.raw_dataset import has_dataset_json, read_dataset_json
from fpnunet.training.splits import apply_label_fraction, fold_cases, load_or_create_splits

VARIANTS = ("proj", "proj+enface")
DEFAULT_TRAINER = "nnUNetTrainer_5epochs"
LABELS = {"proj": "nnU-Net v2 2D, mean projection", "proj+enface": "nnU-Net v2 2D, projection + FAF/SLO"}


# ----------------------------------------------------------------------------- export
def projection_channels(data_dir: Path, case: str, modalities: list[str]) -> list[np.ndarray]:
    """En-face images of a preprocessed case: the depth mean of each volume channel, then the
    en-face modalities (``CASE_FAF.npy`` ...) in the given order."""
    volume = np.load(data_dir / f"{case}.npy", mmap_mode="r")  # (C, B, D, A)
    out = [np.asarray(volume[c]).mean(axis=1, dtype=np.float64).astype(np.float32) for c in range(volume.shape[0])]
    for m in modalities:
        path = data_dir / f"{case}_{m}.npy"
        if not path.is_file():
            raise FPNError(f"{path}: missing; variant proj+enface needs every case's {m} image")
        out.append(np.load(path).astype(np.float32))
    return out


def export_variant(variant: str, target: Path, data_dir: Path, cases: list[str], plan: Plan) -> None:
    """nnU-Net v2 raw dataset at ``target`` (``dataset.json``, ``imagesTr``, ``labelsTr``), 2D NIfTI."""
    modalities = list(plan.enface_modalities) if variant == "proj+enface" else []
    channels = [f"OCT{c}_mean" for c in range(plan.num_input_channels)] + modalities
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in cases:
        props = load_json(data_dir / f"{case}.json")
        geometry = props["geometry"]
        spacing, origin = tuple(geometry["spacing"]), tuple(geometry["origin"])
        for i, image in enumerate(projection_channels(data_dir, case, modalities)):
            write_image(target / "imagesTr" / f"{case}_{i:04d}.nii.gz", image, spacing, origin)
        seg = PreprocessedDataset(data_dir).load_label(case).astype(np.uint8)
        write_image(target / "labelsTr" / f"{case}.nii.gz", seg, spacing, origin)
    save_json({"channel_names": {str(i): name for i, name in enumerate(channels)}, "labels": dict(plan.labels),
               "numTraining": len(cases), "file_ending": ".nii.gz"}, target / "dataset.json")


# ----------------------------------------------------------------------------- nnU-Net
class NNUNet:
    """nnU-Net's console scripts with its three folders set."""

    def __init__(self, bin_dir: str | None, work: Path, log_dir: Path):
        self.bin_dir = bin_dir
        self.env = dict(os.environ)
        for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                         ("nnUNet_results", "nnUNet_results")):
            self.env[var] = str(work / sub)
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.env.setdefault("nnUNet_compile", "false")
        self.env.setdefault("nnUNet_n_proc_DA", "1")
        self.work, self.log_dir = work, log_dir

    def script(self, name: str) -> str:
        path = Path(self.bin_dir) / name if self.bin_dir else None
        if path is not None and path.is_file():
            return str(path)
        if path is None and any((Path(p) / name).is_file() for p in os.environ.get("PATH", "").split(os.pathsep)):
            return name
        raise FPNError(f"{name} not found ({'in ' + self.bin_dir if self.bin_dir else 'on the PATH'}): install "
                       "nnU-Net v2 (pip install -e '.[bench]', or nnunetv2 in a venv of its own) and pass --nnunet-bin")

    def call(self, name: str, args: list[str], log: str) -> None:
        command = [self.script(name), *args]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{log}.log"
        print(f"  $ {shlex.join([name, *args])}  (log: {path})", flush=True)
        with open(path, "a") as f:
            rc = subprocess.call(command, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            tail = "".join(path.read_text().splitlines(keepends=True)[-12:])
            raise FPNError(f"{name} failed with status {rc}; end of {path}:\n{tail}")


# ----------------------------------------------------------------------------- the benchmark
def fold_plan(pre_dir: Path, data_dir: Path, dataset: str, folds: list[int],
              fractions: list[float]) -> list[tuple[float, int, list[str], list[str]]]:
    """``(fraction, fold, train cases, val cases)`` exactly as ``fpn_train`` would use them."""
    from fpnunet.training.supervised import labelled_cases  # lazy: start-up time (torch)

    labelled = labelled_cases(data_dir)
    raw_dir = raw_root() / dataset
    patients = read_dataset_json(pre_dir).get("patients", {}) if has_dataset_json(pre_dir) else {}
    splits = load_or_create_splits(pre_dir, raw_dir if raw_dir.is_dir() else None, labelled, patients)
    out = []
    for fraction in fractions:
        for fold in folds:
            train, val = fold_cases(splits, fold)
            out.append((fraction, fold, apply_label_fraction(train, fraction), val))
    return out


def run(args: argparse.Namespace, argv: list[str]) -> pd.DataFrame:
    dataset = resolve_dataset(args.dataset)
    pre_dir = preprocessed_root() / dataset
    plan = Plan.load(plans_file(pre_dir))
    data_dir = pre_dir / plan.configuration(args.config).data_identifier
    work = Path(args.work) if args.work else results_root() / f"nnunet_projection_{dataset}"
    out = Path(args.out)
    runs_file = out / "runs.csv"
    done = pd.read_csv(runs_file) if runs_file.is_file() else pd.DataFrame(
        columns=["variant", "method", "fraction", "fold", "dice", "trainer", "seconds"])
    runs = fold_plan(pre_dir, data_dir, dataset, args.folds, args.fractions)
    nn = NNUNet(args.nnunet_bin, work, work / "logs")
    for v_index, variant in enumerate(args.variants):
        nn_id = args.nnunet_id + v_index
        nn_name = f"Dataset{nn_id:03d}_{dataset.split('_', 1)[-1]}{'Proj' if variant == 'proj' else 'ProjEnface'}"
        raw = work / "nnUNet_raw" / nn_name
        cases = sorted({c for _, _, tr, va in runs for c in (*tr, *va)})
        if not has_dataset_json(raw):
            print(f"exporting {len(cases)} cases of {dataset} to {raw} ({variant})", flush=True)
            export_variant(variant, raw, data_dir, cases, plan)
        splits_file = work / "nnUNet_preprocessed" / nn_name / "splits_final.json"
        if not (work / "nnUNet_preprocessed" / nn_name / "nnUNetPlans.json").is_file():
            nn.call("nnUNetv2_plan_and_preprocess", ["-d", str(nn_id), "-c", "2d", "-np", str(args.num_processes),
                                                     "--verify_dataset_integrity"], f"{nn_name}__plan")
        save_json([{"train": tr, "val": va} for _, _, tr, va in runs], splits_file)
        for index, (fraction, fold, train, val) in enumerate(runs):
            seen = done[(done["variant"] == variant) & (done["fraction"] == fraction) & (done["fold"] == fold)
                        & (done["trainer"] == args.trainer)]
            if len(seen):
                print(f"{variant} fraction {fraction:g} fold {fold}: done, skipped", flush=True)
                continue
            print(f"{variant} fraction {fraction:g} fold {fold}: {len(train)} training cases, {len(val)} validation",
                  flush=True)
            t0 = time.perf_counter()
            nn.call("nnUNetv2_train", [str(nn_id), "2d", str(index), "-tr", args.trainer, "-device", args.device],
                    f"{nn_name}__{args.trainer}__split{index}")
            pred = (work / "nnUNet_results" / nn_name / f"{args.trainer}__nnUNetPlans__2d" / f"fold_{index}"
                    / "validation")
            summary = evaluate_folders(raw / "labelsTr", pred, labels=plan.labels, file_ending=".nii.gz",
                                       cases=val, write=False)
            dice = float(summary["foreground_mean"]["Dice"])
            print(f"  Dice {dice:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            row = {"variant": variant, "method": LABELS[variant], "fraction": fraction, "fold": fold, "dice": dice,
                   "trainer": args.trainer, "seconds": round(time.perf_counter() - t0, 1)}
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(runs_file, lambda tmp, table=done: table.to_csv(tmp, index=False), suffix=".csv")
    write_report(done, out, argv)
    return done


def write_report(done: pd.DataFrame, out: Path, argv: list[str]) -> None:
    lines = ["# nnU-Net v2 on en-face projections", "", "```", shlex.join(["python", "benchmarks/nnunet_projection.py",
                                                                          *argv]), "```", "",
             "| method | trainer | fraction | Dice % (mean +- std) | n |", "|---|---|---|---|---|"]
    for (method, trainer, fraction), g in done.groupby(["method", "trainer", "fraction"], sort=True):
        std = 100 * g["dice"].std() if len(g) > 1 else float("nan")
        lines.append(f"| {method} | {trainer} | {fraction:g} | {100 * g['dice'].mean():.2f} +- {std:.2f} | {len(g)} |")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "nnunet_projection.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"), suffix=".md")
    print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="planned and preprocessed fpnunet dataset (id or name)")
    p.add_argument("-c", "--config", default=None, help="plan configuration whose preprocessed data to project")
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2, 1.0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--trainer", default=DEFAULT_TRAINER,
                   help="a trainer class nnU-Net ships (default nnUNetTrainer_5epochs; nnUNetTrainer: 1000 epochs)")
    p.add_argument("--device", default="cpu", help="nnUNetv2_train -device: cpu, cuda, mps (default cpu)")
    p.add_argument("--nnunet-bin", default=None, help="folder with nnU-Net's console scripts (default: the PATH)")
    p.add_argument("--nnunet-id", type=int, default=700, help="nnU-Net dataset id of the first variant (default 700)")
    p.add_argument("--num-processes", type=int, default=1, help="nnU-Net preprocessing processes (default 1)")
    p.add_argument("--work", default=None, help="nnU-Net's folders (default $FPN_RESULTS/nnunet_projection_DATASET)")
    p.add_argument("--out", default="docs/label_efficiency/nnunet_projection", help="runs.csv and the table")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if any(not 0 < f <= 1 for f in args.fractions):
        print(f"error: label fractions must lie in (0, 1], got {args.fractions}", file=sys.stderr)
        return 2
    try:
        run(args, argv)
    except FPNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
