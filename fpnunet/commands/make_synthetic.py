"""The ``fpn_make_synthetic`` command."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from fpnunet import cli_args
from fpnunet.cli_utils import run_cli, run_command
from fpnunet.raw_dataset import read_dataset_json
from fpnunet.synthetic.geometry import DEFAULT_SHAPE, VOLUME_ENDINGS, spacing_for_shape


@dataclass(frozen=True)
class SyntheticConfig:
    """The dataset ``fpn_make_synthetic`` writes (see :func:`fpnunet.synthetic.dataset.make_synthetic_dataset`)."""

    output: Path
    num_cases: int
    labelled_fraction: float
    seed: int
    shape: tuple[int, int, int]
    num_test: int | None
    file_ending: str
    name: str | None
    progress: bool
    enface_lesion_contrast: float = 1.0
    classes: int = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_make_synthetic",
        description="Write a synthetic OCT + en-face (FAF, SLO) geographic-atrophy dataset in the raw "
                    "fpnunet layout (imagesTr, enfaceTr, labelsTr, imagesTs, labelsTs, dataset.json).",
    )
    p.add_argument("-o", "--output", required=True, help="dataset folder to write, e.g. $FPN_RAW/Dataset900_SynthGA")
    p.add_argument("-n", "--num-cases", type=int, default=60, help="training cases (default 60)")
    p.add_argument("--labelled-fraction", type=float, default=1.0,
                   help="share of training cases with a label, in (0, 1] (default 1.0)")
    cli_args.add_seed(p, help="random seed; same seed, same files")
    p.add_argument("--shape", type=int, nargs=3, metavar=("B", "D", "A"), default=list(DEFAULT_SHAPE),
                   help=f"volume shape: B-scans, depth, A-scans (default {' '.join(map(str, DEFAULT_SHAPE))}; "
                        "Spectralis-like: 49 496 512)")
    p.add_argument("--num-test", type=int, default=None, help="test cases (default max(2, n // 5))")
    p.add_argument("--file-ending", default=".nii.gz", help=f"one of {', '.join(VOLUME_ENDINGS)} (default .nii.gz)")
    p.add_argument("--name", default=None, help="dataset and case-name prefix (default: from the folder, or SynthGA)")
    p.add_argument("--enface-lesion-contrast", type=float, default=1.0, metavar="C",
                   help="how much the lesion shows in the FAF/SLO images, 0..1 (0.1: barely; default 1.0)")
    p.add_argument("--classes", type=int, default=1, choices=(1, 2),
                   help="label classes: 1 (GA) or 2 (GA and the perilesional zone, a band 0.2 mm wide around "
                        "each lesion; default 1)")
    cli_args.add_progress(p, help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    """The flags as a config (the generator checks their values before it writes anything)."""
    return SyntheticConfig(Path(args.output), args.num_cases, args.labelled_fraction, args.seed, tuple(args.shape),
                           args.num_test, args.file_ending, args.name, args.progress, args.enface_lesion_contrast,
                           args.classes)


def run(config: SyntheticConfig) -> int:
    from fpnunet.synthetic.dataset import make_synthetic_dataset  # lazy: start-up time

    out = make_synthetic_dataset(config.output, n=config.num_cases, labelled_fraction=config.labelled_fraction,
                                 seed=config.seed, shape=config.shape, num_test=config.num_test,
                                 file_ending=config.file_ending, name=config.name, show_progress=config.progress,
                                 enface_lesion_contrast=config.enface_lesion_contrast, classes=config.classes)
    meta = read_dataset_json(out)["synthetic"]
    b, d, a = meta["shape_bda"]
    sb, sd, sa = spacing_for_shape((b, d, a))
    print(f"wrote {out}")
    print(f"{meta['n']} training cases ({meta['num_labelled']} labelled) + {meta['num_test']} test cases, "
          f"volume {b}x{d}x{a} (B x D x A), spacing {sb * 1000:.0f} x {sd * 1000:.1f} x {sa * 1000:.1f} um, "
          f"en-face FAF + SLO, seed {meta['seed']}")
    return 0


@run_cli
def main(argv: list[str] | None = None) -> int:
    """``fpn_make_synthetic -o DIR [-n N] [--labelled-fraction F] [--seed S] [--shape B D A] ...``."""
    return run_command(argv, build_parser, config_from_args, run)

