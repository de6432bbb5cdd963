"""Whole-plane vs tiled prediction of a trained fold on its validation cases: Dice and probabilities.

For each validation case of ``--fold`` (from the preprocessed dataset's ``splits_final.json``) the
fold's final checkpoint predicts the preprocessed volume twice: on the training patch grid with
Gaussian blending (``--window patch``, the predictor before whole-plane inference) and in one
window over the whole en-face plane (``--window whole``). Printed: each case's Dice of both
against the label map, the largest and the mean absolute difference of the probabilities, and the
means over the cases::

    python benchmarks/whole_vs_tiled.py -d 917 --fold 0            # model under $FPN_RESULTS
    python benchmarks/whole_vs_tiled.py -d 917 --fold 0 --tta      # with flip TTA (both variants)

Used for docs/speed.md (a trained FPN on synthetic volumes whose plane is larger than the patch).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from fpnunet.inference.export import probabilities_to_segmentation
from fpnunet.inference.predictor import Predictor
from fpnunet.paths import preprocessed_dir, results_dir
from fpnunet.training.supervised import load_label, load_volume, mean_foreground_dice


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--dataset", required=True, help="dataset id or folder name")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder under $FPN_RESULTS/DatasetXXX (default: the only one)")
    p.add_argument("--checkpoint", default="final", choices=("final", "best", "latest"))
    p.add_argument("--tta", action="store_true", help="flip TTA in both variants (default: none, as validation)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results, preprocessed = results_dir(args.dataset), preprocessed_dir(args.dataset)
    models = sorted(d for d in results.iterdir() if d.is_dir()) if args.model is None else [results / args.model]
    if len(models) != 1:
        raise SystemExit(f"error: {results}: name the model folder with --model (found {[m.name for m in models]})")
    kw = dict(folds=[args.fold], checkpoint=args.checkpoint, device="cpu", tta=args.tta)
    variants = {"tiled": Predictor.from_model_folder(models[0], window="patch", **kw),
                "whole": Predictor.from_model_folder(models[0], window="whole", **kw)}
    plan, config = variants["whole"].plan, variants["whole"].config
    data_dir = preprocessed / config.data_identifier
    splits = json.loads((preprocessed / "splits_final.json").read_text())
    cases = splits[args.fold]["val"]
    print(f"model {models[0]}, fold {args.fold} ({args.checkpoint}), patch {tuple(config.patch_size)}, "
          f"depth {config.depth}, TTA {'on' if args.tta else 'off'}, {len(cases)} validation case(s)")
    print("| case | plane (B x A) | tiled windows | Dice tiled | Dice whole | max abs prob diff | mean abs prob diff |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for case in cases:
        volume, ref = load_volume(data_dir, case), load_label(data_dir, case)
        probs = {name: pred.predict_preprocessed(volume) for name, pred in variants.items()}
        dice = {name: mean_foreground_dice(ref, probabilities_to_segmentation(pr, labels=plan.labels), plan.labels)
                for name, pr in probs.items()}
        diff = np.abs(probs["whole"] - probs["tiled"])
        windows = variants["tiled"].window_plan(tuple(volume.shape[-3::2])).num_windows
        rows.append((dice["tiled"], dice["whole"], float(diff.max()), float(diff.mean())))
        print(f"| {case} | {volume.shape[1]} x {volume.shape[3]} | {windows} | {dice['tiled']:.4f} | "
              f"{dice['whole']:.4f} | {diff.max():.4f} | {diff.mean():.5f} |", flush=True)
    mean = np.mean(rows, axis=0)
    print(f"| **mean** | | | **{mean[0]:.4f}** | **{mean[1]:.4f}** | {np.max([r[2] for r in rows]):.4f} (max) | "
          f"{mean[3]:.5f} |")
    print(f"Dice whole - tiled: {mean[1] - mean[0]:+.4f} (per case: "
          f"{', '.join(f'{r[1] - r[0]:+.4f}' for r in rows)})")


if __name__ == "__main__":
    main()
