"""Label efficiency: Dice against the share of labelled training cases, with and without SSL.

Reproduces, in kind, Table 1 of Morano et al. (MICCAI 2023; docs/design.md) on a synthetic
GA dataset sized for the machine: for every network (FPN and baselines), label fraction, fold and
seed it trains ``fpn_train`` from scratch and, for the networks given to ``--pretrain-networks``,
fine-tuned from FAF and SLO reconstruction pretraining (``fpn_pretrain``). Each run's score is
the mean foreground Dice of its fold's whole-volume validation (flip TTA), read from
``fold_k/validation/summary.json``. Output (``--out``, default ``docs/label_efficiency/``)::

    label_efficiency.md    the table (rows method, columns fraction, mean +- std Dice % over
                           folds x seeds) plus the settings and the command that made it
    label_efficiency.csv   the same table, long form (method, fraction, mean, std, n)
    paired_differences.csv each method minus FPN from scratch on the same fold and seed
                           (method, reference, fraction, mean, std, n, wins)
    runs.csv               one row per run (method, network, pretraining, fraction, fold, seed, Dice)
    label_efficiency.png   Dice against label fraction, one line per method
    nnunet/                with --nnunet-bin: nnU-Net v2 2D (mean projection, projection + en-face
                           images; benchmarks/nnunet_projection.py) on the same folds and fractions,
                           whose rows every report above then shows beside fpnunet's

Everything runs through the console scripts' entry points (``main(argv)``, one fresh interpreter
per run, its output in ``<work>/logs/``). The sweep is resumable: a run whose fold folder holds
``checkpoint_final.pth`` and ``validation/summary.json`` is skipped, one with only
``checkpoint_latest.pth`` is resumed with ``--continue``; a pretraining run is finished when it
has ``checkpoint_final.pth``. Interrupt it at any time and start the same command again. The
report needs only each run's ``validation/summary.json`` (so results copied back from another
machine without their checkpoints can be reported with ``--report-only``).

``--jobs N`` runs N trainings at once (worth it on a GPU, where one of these small runs leaves
most of the device idle; on a 2-core CPU it only thrashes): pretrainings and scratch runs start
at once, each fine-tuning run waits for its pretraining.

Layout (``--work``, default ``$FPN_RESULTS/label_efficiency_DatasetXXX``): pretraining runs in
``pretrain/``; fine-tuning runs in ``seed{S}/{method}/`` where each is an ``FPN_RESULTS`` root of
its own (so FAF- and SLO-initialised runs of one network never share a model folder). The
dataset (``--dataset-id``, default 950) is created with ``fpn_make_synthetic`` when missing from
``$FPN_RAW`` and planned + preprocessed for every network when needed.

A reduced sweep for a CPU::

    python benchmarks/label_efficiency.py --num-cases 40 --epochs 20 --iterations-per-epoch 25 \\
        --pretrain-epochs 20 --folds 0 1 2 --networks fpn lachinov --device cpu
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fpnunet.errors import FPNError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules next to this script
from label_efficiency_methods import DISPLAY, FRACTIONS, TARGETS, Method, Run, methods_of  # noqa: E402
from label_efficiency_nnunet import add_arguments, check_arguments  # noqa: E402
from label_efficiency_report import (  # noqa: E402
    paired_differences,
    plot,
    read_dice,
    render_markdown,
    summarise,
)
from label_efficiency_sweep import CONSOLE_SCRIPTS, Sweep, say  # noqa: E402

__all__ = [  # what callers (tests, label_efficiency_cmc.py) use from here
    "CONSOLE_SCRIPTS", "DISPLAY", "FRACTIONS", "TARGETS", "Method", "Run", "Sweep", "build_parser", "main",
    "methods_of", "paired_differences", "plot", "read_dice", "render_markdown", "say", "summarise",
]


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("dataset")
    d.add_argument("--dataset-id", type=int, default=950, help="synthetic dataset id (default 950)")
    d.add_argument("--dataset-name", default="SynthGA", help="its name (Dataset950_SynthGA)")
    d.add_argument("--num-cases", type=int, default=40, help="training cases when it is created (default 40)")
    d.add_argument("--shape", type=int, nargs=3, default=(32, 160, 128), metavar=("B", "D", "A"),
                   help="volume shape when it is created (default 32 160 128)")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    d.add_argument("--num-processes", type=int, default=2, help="preprocessing processes (default 2)")
    d.add_argument("--gpu-memory-gb", type=float, default=None, help="passed to fpn_plan_and_preprocess")
    s = p.add_argument_group("sweep")
    s.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS), help="label fractions")
    s.add_argument("--networks", nargs="+", default=["fpn", "lachinov"], help="networks (default fpn lachinov)")
    s.add_argument("--pretrain-networks", nargs="*", default=["fpn"],
                   help="networks also fine-tuned from SSL pretraining (default fpn, as the paper)")
    s.add_argument("--encoder-ssl-networks", nargs="*", default=[],
                   help="networks (dsnet, dxnet) also fine-tuned from the 2D encoder of --encoder-ssl-source's "
                        "pretraining (fpn_train --encoder-weights)")
    s.add_argument("--encoder-ssl-source", default="omnia", help="whose pretraining gives that encoder (omnia)")
    s.add_argument("--targets", nargs="*", default=list(TARGETS), help="pretraining targets (default FAF SLO)")
    s.add_argument("--cmc-networks", nargs="*", default=[],
                   help="networks also trained with --trainer cmc, from scratch and from each pretraining "
                        "(rows '... + CMC'; benchmarks/label_efficiency_cmc.py adds fused and misalignment)")
    s.add_argument("--only", nargs="+", metavar="ROW", help="run / report only these rows, e.g. 'FPN + FAF SSL'")
    s.add_argument("--folds", type=int, nargs="+", default=[0], help="folds (default 0)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    s.add_argument("--jobs", type=int, default=1,
                   help="runs at once (default 1; a GPU takes several small runs, a CPU does not gain)")
    t = p.add_argument_group("training (default: the plan's)")
    t.add_argument("--epochs", type=int, help="fine-tuning / scratch epochs")
    t.add_argument("--iterations-per-epoch", type=int, help="steps per epoch (training and pretraining)")
    t.add_argument("--lr", type=float, help="fine-tuning / scratch learning rate")
    t.add_argument("--weight-decay", type=float, help="fine-tuning / scratch weight decay")
    t.add_argument("--val-every", type=int, help="validation every N epochs")
    t.add_argument("--pretrain-epochs", type=int, help="pretraining epochs")
    t.add_argument("--pretrain-lr", type=float, help="pretraining learning rate")
    t.add_argument("--pretrain-seed", type=int, default=0, help="pretraining seed (default 0)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda")
    t.add_argument("--num-workers", type=int, help="augmentation workers per run (FPN_N_PROC_DA)")
    o = p.add_argument_group("output")
    o.add_argument("--work", help="where the runs go (default $FPN_RESULTS/label_efficiency_DatasetXXX_NAME)")
    o.add_argument("--out", default="docs/label_efficiency", help="table, csv and plot (default docs/label_efficiency)")
    o.add_argument("--report-only", action="store_true", help="only collect finished runs and write the report")
    o.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad:
        print(f"error: label fractions must lie in (0, 1], got {bad}", file=sys.stderr)
        return 2
    if args.encoder_ssl_networks and args.encoder_ssl_source not in args.networks:
        print(f"error: --encoder-ssl-source {args.encoder_ssl_source} must be one of --networks (it is pretrained)",
              file=sys.stderr)
        return 2
    error = check_arguments(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        sweep = Sweep(args)
        if not args.report_only:
            t0 = time.perf_counter()
            sweep.prepare_dataset()
            if args.jobs > 1:
                sweep.run_parallel(args.jobs)
            else:
                sweep.pretrain()
                for i, run in enumerate(sweep.runs, 1):
                    sweep.train(run, i)
            if args.nnunet_bin:
                sweep.run_nnunet()
            print(f"sweep done in {(time.perf_counter() - t0) / 60:.1f} min")
        if not args.dry_run:
            sweep.report(argv)
    except FPNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
