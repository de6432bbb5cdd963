"""Validation Dice of trained checkpoints with their BatchNorm statistics as saved and recalibrated.

For every ``fold_k/checkpoint_final.pth`` (or ``--checkpoint`` name) under the given folders, the
fold's validation cases are predicted whole twice:

* ``saved``: with the running statistics stored in the checkpoint;
* ``recalibrated``: after :func:`fpnunet.training.loop.recalibrate_batchnorm` recomputed them
  as the plain average over ``--batches`` batches of the run's own training loader (the fold's
  label-fraction-reduced training cases, the run's seed, its last epoch), weights untouched.

Checkpoints written since ``bn_recalibration`` became a plan default (2026-11-24) already hold
recalibrated statistics, so for them the two columns agree up to the batches drawn; checkpoints
of older runs show what the recalibration changes. Networks without BatchNorm are listed and
skipped. Run from the repository with ``FPN_PREPROCESSED`` pointing at the runs' preprocessed data.

Usage::

    python benchmarks/bn_recalibration.py fpn_data/results/label_efficiency_Dataset950_SynthGA \\
        --batches 25 --csv bn.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fpnunet.errors import FPNError
from fpnunet.networks.registry import model_from_checkpoint
from fpnunet.paths import preprocessed_root
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.training.loader import default_num_workers
from fpnunet.training.loop import batch_to_device, batchnorm_layers, recalibrate_batchnorm
from fpnunet.training.run_config import RunConfig, saved_settings
from fpnunet.training.splits import apply_label_fraction, fold_cases, load_or_create_splits
from fpnunet.training.supervised import SupervisedTrainer, labelled_cases, validate_volumes


def find_checkpoints(roots: list[Path], name: str) -> list[Path]:
    """``fold_*/checkpoint_<name>.pth`` under ``roots``, pretraining runs (``fold_all``) excluded."""
    found: list[Path] = []
    for root in roots:
        if not root.exists():
            raise FPNError(f"{root}: no such folder")
        found += [p for p in root.rglob(f"checkpoint_{name}.pth") if p.parent.name.startswith("fold_")
                  and p.parent.name != "fold_all"]
    return sorted(set(found))


def run_precision(ckpt: dict[str, Any]) -> str:
    """The precision the run trained in (``bf16`` or ``fp32``): the statistics are recomputed in it."""
    return str(saved_settings(ckpt).get("precision", "fp32"))


def evaluate(path: Path, batches: int, tta: bool, device: str) -> dict[str, Any]:
    model, ckpt = model_from_checkpoint(path, device)
    args = saved_settings(ckpt)
    row: dict[str, Any] = {"run": f"{path.parent.parent.name}/{path.parent.name}",
                           "network": ckpt["network"]["name"], "fraction": args.get("label_fraction")}
    if not batchnorm_layers(model):
        return row | {"note": "no BatchNorm"}
    plan_file = plans_file(path.parent.parent)
    dataset = str(args.get("dataset", ""))
    pre_dir = preprocessed_root() / dataset
    plan = Plan.load(plan_file if plan_file.is_file() else plans_file(pre_dir))
    config_name = ckpt["configuration"]
    data_dir = pre_dir / plan.configuration(config_name).data_identifier
    if not data_dir.is_dir():
        raise FPNError(f"{data_dir}: preprocessed data of {path} not found (set FPN_PREPROCESSED)")
    splits = load_or_create_splits(pre_dir, None, labelled_cases(data_dir))
    train, val = fold_cases(splits, str(args.get("fold")))
    train = apply_label_fraction(train, float(args.get("label_fraction", 1.0)))
    seed = int(args.get("seed", 0))
    precision = run_precision(ckpt)  # validated and recalibrated in the run's precision, whatever the CPU
    channels_last = bool(args.get("channels_last", True))  # as trained
    saved = validate_volumes(model, plan, config_name, data_dir, val, device=device, tta=tta,
                             precision=precision)["val_dice"]
    configuration = plan.configuration(config_name)
    task = SupervisedTrainer(RunConfig(config=config_name, data_dir=str(data_dir), train_cases=tuple(train),
                                       val_cases=tuple(val), seed=seed, device=device,
                                       num_workers=default_num_workers(), batch_size=configuration.batch_size,
                                       foreground_oversample=configuration.training.foreground_oversample), plan)
    source = task.train_batches(max(int(ckpt.get("epoch", 1)) - 1, 0))
    try:
        used = recalibrate_batchnorm(model, source, batches,
                                     prepare=lambda b: batch_to_device(b, torch.device(device), channels_last),
                                     precision=precision)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    recal = validate_volumes(model, plan, config_name, data_dir, val, device=device, tta=tta,
                             precision=precision)["val_dice"]
    return row | {"train_cases": len(train), "val_cases": len(val), "batches": used, "saved": saved,
                  "recalibrated": recal, "change": recal - saved}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="results folders searched for fold checkpoints")
    p.add_argument("--checkpoint", default="final", help="checkpoint name: final, best or latest (default final)")
    p.add_argument("--batches", type=int, default=25, help="training batches averaged (default 25)")
    p.add_argument("--tta", action="store_true", help="validate with flip TTA (4x slower)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", type=Path, help="also write the table here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = find_checkpoints(args.folders, args.checkpoint)
        if not paths:
            raise FPNError(f"no fold_*/checkpoint_{args.checkpoint}.pth under {', '.join(map(str, args.folders))}")
        rows = []
        for i, path in enumerate(paths, 1):
            rows.append(evaluate(path, args.batches, args.tta, args.device))
            r = rows[-1]
            shown = r.get("note") or f"saved {r['saved']:.4f} -> recalibrated {r['recalibrated']:.4f}"
            print(f"[{i}/{len(paths)}] {path}: {shown}", flush=True)
    except FPNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if "change" in table:
        change = table["change"].dropna()
        print(f"change in validation Dice over {len(change)} checkpoints with BatchNorm: min {change.min():+.3f}, "
              f"median {change.median():+.3f}, max {change.max():+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
