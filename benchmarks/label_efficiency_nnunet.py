"""nnU-Net v2 2D beside fpnunet's rows in the label-efficiency reports (optional, ``--nnunet-bin``).

``benchmarks/label_efficiency.py`` and ``benchmarks/label_efficiency_cmc.py`` take the flags of
:func:`add_arguments`. With ``--nnunet-bin DIR``, after fpnunet's runs they run
``benchmarks/nnunet_projection.py`` on the same dataset, folds and label fractions (nnU-Net's
own commands, its ``--nnunet-trainer``, the ``--nnunet-variants`` ``proj`` and ``proj+enface``),
its ``runs.csv`` and table in ``<out>/nnunet/`` and nnU-Net's folders in ``<work>/nnunet/``.
Every report then reads that ``runs.csv`` with :func:`nnunet_runs` (also under ``--report-only``,
and whenever an earlier run left it there): one row per variant and trainer, labelled
``nnU-Net v2 2D, ... (TRAINER)``, beside fpnunet's rows.
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pandas as pd
from label_efficiency_methods import RUN_COLUMNS
from nnunet_projection import DEFAULT_TRAINER, VARIANTS

NNUNET_DIR = "nnunet"
"""The sub-folder of ``--out`` (nnU-Net's ``runs.csv``) and of ``--work`` (nnU-Net's folders)."""
SCRIPTS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("nnU-Net v2 2D beside fpnunet (optional; benchmarks/nnunet_projection.py)")
    g.add_argument("--nnunet-bin", metavar="DIR",
                   help="folder with nnU-Net v2's console scripts (a venv's bin): also run nnU-Net 2D on the same "
                        "folds and label fractions and report its rows")
    g.add_argument("--nnunet-trainer", default=DEFAULT_TRAINER,
                   help=f"a trainer nnU-Net ships (default {DEFAULT_TRAINER}; nnUNetTrainer: 1000 epochs)")
    g.add_argument("--nnunet-variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="nnU-Net inputs: mean projection, projection + en-face images (default both)")


def check_arguments(args: argparse.Namespace) -> str | None:
    """The one-line error for a ``--nnunet-bin`` that is not a folder with nnU-Net's scripts, else None."""
    if args.nnunet_bin is None:
        return None
    folder = Path(args.nnunet_bin)
    if not folder.is_dir():
        return f"--nnunet-bin {folder}: no such folder (the bin folder of a venv with nnunetv2)"
    missing = [name for name in SCRIPTS if not (folder / name).is_file()]
    if missing:
        return f"--nnunet-bin {folder}: {', '.join(missing)} not in it (the bin folder of a venv with nnunetv2)"
    return None


def nnunet_device(device: str) -> str:
    """``nnUNetv2_train -device`` for the benchmark's ``--device`` (auto: cuda when torch sees one)."""
    if device != "auto":
        return device
    import torch  # lazy: start-up time

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_nnunet(args: argparse.Namespace, dataset: str, config: str, out: Path, work: Path, device: str,
               dry_run: bool = False) -> None:
    """``nnunet_projection``'s run for ``dataset`` on ``args.folds`` x ``args.fractions`` (resumable: its
    finished runs are skipped); its ``runs.csv`` in ``out / NNUNET_DIR``."""
    argv = ["-d", dataset, "-c", config, "--folds", *map(str, args.folds),
            "--fractions", *(f"{f:g}" for f in args.fractions), "--variants", *args.nnunet_variants,
            "--trainer", args.nnunet_trainer, "--device", nnunet_device(device), "--nnunet-bin", args.nnunet_bin,
            "--work", str(work / NNUNET_DIR), "--out", str(out / NNUNET_DIR)]
    print(f"nnU-Net v2 2D ({args.nnunet_trainer}): $ python benchmarks/nnunet_projection.py {shlex.join(argv)}",
          flush=True)
    if dry_run:
        return
    import nnunet_projection  # lazy: start-up time

    nnunet_projection.run(nnunet_projection.build_parser().parse_args(argv), argv)


def nnunet_label(method: str, trainer: str) -> str:
    """The report's row name: nnunet_projection's method name and the nnU-Net trainer."""
    return f"{method} ({trainer})"


def nnunet_runs(out: Path, fractions: list[float], folds: list[int], seed: int,
                variants: list[str] | None = None) -> pd.DataFrame:
    """``out / NNUNET_DIR / runs.csv`` (``nnunet_projection``'s) as the report's run rows (:data:`RUN_COLUMNS`),
    only the given fractions, folds and variants; nnU-Net ran once per fold, so its rows carry ``seed``
    (the sweep's first) and pair with that seed's runs. No file: no rows."""
    path = out / NNUNET_DIR / "runs.csv"
    if not path.is_file():
        return pd.DataFrame(columns=RUN_COLUMNS)
    done = pd.read_csv(path)
    keep = done["variant"].isin(variants or VARIANTS) & done["fold"].isin(folds)
    keep &= done["fraction"].astype(float).apply(lambda f: any(abs(f - g) < 1e-9 for g in fractions))
    done = done[keep].copy()
    done["order"] = done["variant"].map({v: i for i, v in enumerate(VARIANTS)})
    done = done.sort_values(["order", "trainer", "fraction", "fold"], kind="stable")
    rows = [{"method": nnunet_label(r.method, r.trainer), "network": "nnunet-2d", "trainer": r.trainer,
             "pretrain": "none", "fraction": float(r.fraction), "fold": int(r.fold), "seed": seed,
             "dice": float(r.dice), "folder": str(path)} for r in done.itertuples()]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def rows_in_order(nnunet: pd.DataFrame) -> list[str]:
    """The nnU-Net row names, in the order of :func:`nnunet_runs`."""
    return list(dict.fromkeys(nnunet["method"]))
