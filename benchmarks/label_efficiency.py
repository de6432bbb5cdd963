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
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fpnunet.atomic import atomic_path, load_json, save_json, write_atomic
from fpnunet.errors import FPNError
from fpnunet.paths import preprocessed_root, raw_root, results_root

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report module next to this script
from label_efficiency_report import (  # noqa: E402
    paired_differences,
    plot,
    read_dice,
    render_markdown,
    summarise,
)

FRACTIONS = (0.05, 0.1, 0.2, 1.0)
TARGETS = ("FAF", "SLO")
DISPLAY = {"fpn": "FPN", "ipn": "IPN", "ipnv2": "IPNv2", "lachinov": "Lachinov et al.", "resensnet": "ReSensNet"}
CONSOLE_SCRIPTS = {"fpnunet.synthetic": "fpn_make_synthetic", "fpnunet.preprocessing.cli": "fpn_plan_and_preprocess",
                   "fpnunet.training.pretrain_cli": "fpn_pretrain", "fpnunet.training.train_cli": "fpn_train"}


# ----------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Method:
    """A row of the table: a network, trained from scratch (``pretrain None``) or fine-tuned."""

    network: str
    pretrain: str | None = None

    @property
    def key(self) -> str:
        return "scratch" if self.pretrain is None else f"ssl-{self.pretrain}"

    @property
    def label(self) -> str:
        name = DISPLAY.get(self.network, self.network)
        return name if self.pretrain is None else f"{name} + {self.pretrain} SSL"


@dataclass(frozen=True)
class Run:
    method: Method
    fraction: float
    fold: int
    seed: int


def methods_of(networks: list[str], pretrain_networks: list[str], targets: list[str]) -> list[Method]:
    """Scratch for every network, then SLO / FAF fine-tuning for the pretrained ones (paper order)."""
    out = [Method(n) for n in networks]
    for n in networks:
        if n in pretrain_networks:
            out += [Method(n, t) for t in sorted(targets, key=lambda t: t != "SLO")]
    return out


_SAY = threading.Lock()


def say(text: str) -> None:
    """Print a whole line at once (``--jobs`` runs print from several threads)."""
    with _SAY:
        sys.stdout.write(f"{text}\n")
        sys.stdout.flush()


# ----------------------------------------------------------------------------- the sweep
class Sweep:
    """Everything the sweep does, given the parsed arguments."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = f"Dataset{args.dataset_id:03d}_{args.dataset_name}"
        self.work = Path(args.work) if args.work else results_root() / f"label_efficiency_{self.name}"
        self.out = Path(args.out)
        self.logs = self.work / "logs"
        self.methods = methods_of(args.networks, args.pretrain_networks, args.targets)
        self.runs = [Run(m, f, k, s) for s in args.seeds for m in self.methods for f in args.fractions
                     for k in args.folds]

    # ------------------------------------------------------------------ subprocesses
    def _call(self, module: str, argv: list[str], log_name: str, results: Path | None = None) -> None:
        env = dict(os.environ)
        env["FPN_RAW"], env["FPN_PREPROCESSED"] = str(raw_root()), str(preprocessed_root())
        env["FPN_RESULTS"] = str(results if results is not None else results_root())
        if self.args.num_workers is not None:
            env["FPN_N_PROC_DA"] = str(self.args.num_workers)
        # the console script's main(argv), in a fresh interpreter (works whether or not the module
        # has a __main__ block)
        command = [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))",
                   *argv]
        shown = shlex.join([CONSOLE_SCRIPTS.get(module, module), *argv])
        log = self.logs / f"{log_name}.log"
        say(f"  $ FPN_RESULTS={env['FPN_RESULTS']} {shown}  (log: {log})")
        if self.args.dry_run:
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} FPN_RESULTS={env['FPN_RESULTS']} {shown}\n")
            f.flush()
            rc = subprocess.call(command, env=env, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise FPNError(f"{shown} failed with status {rc}; end of {log}:\n{tail}")

    def _device_args(self) -> list[str]:
        out = ["--device", self.args.device, "--no-progress"]
        if self.args.num_workers is not None:
            out += ["--num-workers", str(self.args.num_workers)]
        return out

    # ------------------------------------------------------------------ data
    def prepare_dataset(self) -> None:
        """Create the synthetic dataset if missing; plan (every network) and preprocess if needed."""
        a = self.args
        raw = raw_root() / self.name
        if not (raw / "dataset.json").is_file() or not load_json(raw / "dataset.json").get("synthetic", {}).get(
                "complete", False):
            say(f"creating the synthetic dataset {raw}")
            self._call("fpnunet.synthetic", ["-o", str(raw), "-n", str(a.num_cases), "--seed", str(a.data_seed),
                                             "--shape", *map(str, a.shape), "--no-progress"], "make_synthetic")
        made = load_json(raw / "dataset.json").get("synthetic", {}) if not a.dry_run else {}
        wanted = {"n": a.num_cases, "shape_bda": list(a.shape), "seed": a.data_seed}
        differ = {k: made[k] for k, v in wanted.items() if k in made and made[k] != v}
        if differ:
            say(f"note: using the existing {raw}, made with {differ} (not the --num-cases / --shape / --data-seed "
                  f"given); delete it or pick another --dataset-id to make a new one")
        plans = preprocessed_root() / self.name / "plans.json"
        planned = set(load_json(plans).get("configurations", {})) if plans.is_file() else set()
        if not set(a.networks) <= planned or not self._preprocessed():
            say(f"planning and preprocessing {self.name} for {', '.join(a.networks)}")
            argv = ["-d", self.name, "-np", str(a.num_processes), "--network", *a.networks, "--no-progress"]
            if a.gpu_memory_gb is not None:
                argv += ["--gpu-memory-gb", str(a.gpu_memory_gb)]
            self._call("fpnunet.preprocessing.cli", argv, "plan_and_preprocess")

    def _preprocessed(self) -> bool:
        from fpnunet.plans.plan import Plan

        pre = preprocessed_root() / self.name
        try:
            plan = Plan.load(pre / "plans.json")
        except FPNError:
            return False
        n = len(list((raw_root() / self.name / "imagesTr").glob("*")))
        for net in self.args.networks:
            folder = pre / plan.configuration(net).data_identifier
            if len(list(folder.glob("*.json"))) < n:
                return False
        return True

    # ------------------------------------------------------------------ pretraining
    def pretrain_dir(self, network: str, target: str) -> Path:
        return self.work / "pretrain" / self.name / f"pretrain__{network}__{target}" / "fold_all"

    def pretrain(self, only: Method | None = None) -> None:
        """Every pretraining the methods need (``only``: that method's), skipping finished ones."""
        a = self.args
        for m in self.methods if only is None else [only]:
            if m.pretrain is None:
                continue
            fold = self.pretrain_dir(m.network, m.pretrain)
            if (fold / "checkpoint_final.pth").is_file():
                say(f"pretraining {m.network} on {m.pretrain}: done, skipped")
                continue
            argv = [self.name, "--network", m.network, "--target", m.pretrain, *self._device_args(),
                    "--seed", str(a.pretrain_seed)]
            argv += ["--epochs", str(a.pretrain_epochs)] if a.pretrain_epochs else []
            argv += ["--iterations-per-epoch", str(a.iterations_per_epoch)] if a.iterations_per_epoch else []
            argv += ["--lr", str(a.pretrain_lr)] if a.pretrain_lr else []
            argv += ["--continue"] if (fold / "checkpoint_latest.pth").is_file() else []
            say(f"pretraining {m.network} on {m.pretrain}")
            self._call("fpnunet.training.pretrain_cli", argv, f"pretrain__{m.network}__{m.pretrain}",
                       results=self.work / "pretrain")

    # ------------------------------------------------------------------ fine-tuning / scratch
    def results_of(self, run: Run) -> Path:
        """The ``FPN_RESULTS`` root of a run."""
        return self.work / f"seed{run.seed}" / run.method.key

    def fold_dir(self, run: Run) -> Path:
        """The run's fold folder: ``scratch`` for ``--pretrained none``, ``ssl-FAF``/``ssl-SLO`` for a
        pretraining run's checkpoint (each results root holds one method only, so any tag found is
        accepted)."""
        from fpnunet.training.run_folder import fold_folder_name, model_folder_name

        tag = "scratch" if run.method.pretrain is None else f"ssl-{run.method.pretrain}"
        dataset_dir = self.results_of(run) / self.name
        fold = fold_folder_name(run.fold)
        expected = dataset_dir / model_folder_name(run.method.network, run.fraction, tag) / fold
        if not expected.is_dir():
            found = sorted(dataset_dir.glob(f"{model_folder_name(run.method.network, run.fraction, '*')}/{fold}"))
            if len(found) == 1:
                return found[0]
        return expected

    @staticmethod
    def finished(fold: Path) -> bool:
        return (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()

    def train(self, run: Run, index: int) -> None:
        a = self.args
        fold = self.fold_dir(run)
        what = (f"[{index}/{len(self.runs)}] {run.method.label}, fraction {run.fraction:g}, fold {run.fold}, "
                f"seed {run.seed}")
        if self.finished(fold):
            say(f"{what}: done, skipped")
            return
        m = run.method
        pretrained = "none" if m.pretrain is None else str(self.pretrain_dir(m.network, m.pretrain)
                                                           / "checkpoint_final.pth")
        argv = [self.name, str(run.fold), "--network", m.network, "--label-fraction", f"{run.fraction:g}",
                "--pretrained", pretrained, "--seed", str(run.seed), *self._device_args()]
        argv += ["--epochs", str(a.epochs)] if a.epochs else []
        argv += ["--iterations-per-epoch", str(a.iterations_per_epoch)] if a.iterations_per_epoch else []
        argv += ["--lr", str(a.lr)] if a.lr else []
        argv += ["--weight-decay", str(a.weight_decay)] if a.weight_decay is not None else []
        argv += ["--val-every", str(a.val_every)] if a.val_every is not None else []
        if (fold / "checkpoint_final.pth").is_file():
            argv += ["--val"]  # trained, only the final validation is missing
        elif (fold / "checkpoint_latest.pth").is_file():
            argv += ["--continue"]
        say(what)
        t0 = time.perf_counter()
        self._call("fpnunet.training.train_cli", argv,
                   f"seed{run.seed}__{m.key}__{m.network}__lf{run.fraction:g}__fold{run.fold}",
                   results=self.results_of(run))
        if not a.dry_run:
            say(f"{what}: Dice {read_dice(fold):.4f} ({time.perf_counter() - t0:.0f} s)")

    def run_parallel(self, jobs: int) -> None:
        """Up to ``jobs`` runs at once (one GPU holds several of these small runs): every pretraining
        and every scratch run is queued at once, each fine-tuning run waits for its pretraining.
        Failures are collected and raised together at the end; finished runs are kept."""
        pretrainings: dict[tuple[str, str], Future[None]] = {}
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for m in self.methods:
                if m.pretrain is not None and (m.network, m.pretrain) not in pretrainings:
                    pretrainings[(m.network, m.pretrain)] = pool.submit(self.pretrain, m)

            def fine_tune(run: Run, index: int) -> None:
                if run.method.pretrain is not None:
                    pretrainings[(run.method.network, run.method.pretrain)].result()
                self.train(run, index)

            # scratch runs first so that no worker waits on a pretraining while others could run
            order = sorted(enumerate(self.runs, 1), key=lambda ir: ir[1].method.pretrain is not None)
            futures = {pool.submit(fine_tune, run, i): run for i, run in order}
            for future in as_completed([*pretrainings.values(), *futures]):
                exc = future.exception()
                if exc is not None:
                    run = futures.get(future)
                    what = "pretraining" if run is None else f"{run.method.label} {run.fraction:g} fold {run.fold}"
                    failures.append(f"{what}: {exc}")
        if failures:
            raise FPNError(f"{len(failures)} of the sweep's jobs failed:\n" + "\n".join(failures))

    # ------------------------------------------------------------------ report
    def collect(self) -> pd.DataFrame:
        rows = []
        for run in self.runs:
            fold = self.fold_dir(run)
            # the score alone is enough: results copied back without their checkpoints still count
            if (fold / "validation" / "summary.json").is_file():
                rows.append({"method": run.method.label, "network": run.method.network,
                             "pretrain": run.method.pretrain or "none", "fraction": run.fraction, "fold": run.fold,
                             "seed": run.seed, "dice": read_dice(fold), "folder": str(fold)})
        return pd.DataFrame(rows, columns=["method", "network", "pretrain", "fraction", "fold", "seed", "dice",
                                           "folder"])

    def report(self, argv: list[str]) -> pd.DataFrame:
        runs = self.collect()
        order = [m.label for m in self.methods]
        table = summarise(runs, order, list(self.args.fractions))
        paired = paired_differences(runs, order, list(self.args.fractions))
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "runs.csv", suffix=".csv") as tmp:
            runs.drop(columns=["folder"]).to_csv(tmp, index=False)
        with atomic_path(self.out / "label_efficiency.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(self.out / "paired_differences.csv", suffix=".csv") as tmp:
            paired.to_csv(tmp, index=False)
        markdown = render_markdown(table, order, list(self.args.fractions), self.settings(argv),
                                   missing=len(self.runs) - len(runs), paired=paired)
        write_atomic(self.out / "label_efficiency.md", lambda tmp: tmp.write_text(markdown), suffix=".md")
        if len(runs):
            plot(table, order, self.out / "label_efficiency.png")
        save_json(self.settings(argv), self.out / "settings.json")
        print(markdown)
        print(f"wrote {self.out}/label_efficiency.md, label_efficiency.csv, paired_differences.csv, runs.csv"
              f"{', label_efficiency.png' if len(runs) else ''}")
        return table

    def settings(self, argv: list[str]) -> dict[str, Any]:
        a = self.args
        ds = raw_root() / self.name / "dataset.json"
        made = load_json(ds).get("synthetic", {}) if ds.is_file() else {}
        return {"command": shlex.join(["python", "benchmarks/label_efficiency.py", *argv]),
                "dataset": self.name, "num_cases": made.get("n", a.num_cases),
                "shape_bda": made.get("shape_bda", list(a.shape)), "data_seed": made.get("seed", a.data_seed),
                "networks": a.networks, "pretrain_networks": a.pretrain_networks, "targets": a.targets,
                "fractions": list(a.fractions), "folds": list(a.folds), "seeds": list(a.seeds),
                "epochs": a.epochs, "iterations_per_epoch": a.iterations_per_epoch, "lr": a.lr,
                "weight_decay": a.weight_decay,
                "pretrain_epochs": a.pretrain_epochs, "pretrain_lr": a.pretrain_lr, "device": a.device,
                "work": str(self.work)}


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
    s.add_argument("--targets", nargs="*", default=list(TARGETS), help="pretraining targets (default FAF SLO)")
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
    sweep = Sweep(args)
    try:
        if not args.report_only:
            t0 = time.perf_counter()
            sweep.prepare_dataset()
            if args.jobs > 1:
                sweep.run_parallel(args.jobs)
            else:
                sweep.pretrain()
                for i, run in enumerate(sweep.runs, 1):
                    sweep.train(run, i)
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
