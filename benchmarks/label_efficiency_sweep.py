"""The label-efficiency sweep (``benchmarks/label_efficiency.py``): every run it makes, resumably.

:class:`Sweep` creates and preprocesses the synthetic dataset when needed, runs the pretrainings and
the fine-tuning / scratch trainings (each a console script's ``main(argv)`` in a fresh interpreter,
its output in ``<work>/logs/``), one at a time or ``--jobs`` at once, skips what is finished,
resumes what was interrupted, and writes the report (:mod:`label_efficiency_report`) from each
run's ``validation/summary.json``.
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
from pathlib import Path
from typing import Any

import pandas as pd
from label_efficiency_methods import RUN_COLUMNS, Method, Run, methods_of
from label_efficiency_nnunet import NNUNET_DIR, nnunet_runs, rows_in_order, run_nnunet
from label_efficiency_report import paired_differences, plot, read_dice, render_markdown, summarise

from fpnunet.atomic import atomic_path, load_json, save_json, write_atomic
from fpnunet.errors import FPNError
from fpnunet.paths import preprocessed_root, raw_root, results_root
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.raw_dataset import dataset_file, has_dataset_json, read_dataset_json

CONSOLE_SCRIPTS = {"fpnunet.commands.make_synthetic": "fpn_make_synthetic",
                   "fpnunet.commands.plan_and_preprocess": "fpn_plan_and_preprocess",
                   "fpnunet.commands.pretrain": "fpn_pretrain", "fpnunet.commands.train": "fpn_train"}


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
        self.methods = methods_of(args.networks, args.pretrain_networks, args.targets,
                                  tuple(args.encoder_ssl_networks), args.encoder_ssl_source, tuple(args.cmc_networks))
        if args.only:
            unknown = sorted(set(args.only) - {m.label for m in self.methods})
            if unknown:
                raise FPNError(f"--only {unknown}: not rows of this sweep ({[m.label for m in self.methods]})")
            self.methods = [m for m in self.methods if m.label in args.only]
        # method innermost: an interrupted sweep has whole pairs (folds) rather than whole rows
        self.runs = [Run(m, f, k, s) for s in args.seeds for f in args.fractions for k in args.folds
                     for m in self.methods]

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
        if not has_dataset_json(raw) or not read_dataset_json(raw).get("synthetic", {}).get(
                "complete", False):
            say(f"creating the synthetic dataset {raw}")
            self._call("fpnunet.commands.make_synthetic",
                       ["-o", str(raw), "-n", str(a.num_cases), "--seed", str(a.data_seed),
                        "--shape", *map(str, a.shape), "--no-progress"], "make_synthetic")
        made = read_dataset_json(raw).get("synthetic", {}) if not a.dry_run else {}
        wanted = {"n": a.num_cases, "shape_bda": list(a.shape), "seed": a.data_seed}
        differ = {k: made[k] for k, v in wanted.items() if k in made and made[k] != v}
        if differ:
            say(f"note: using the existing {raw}, made with {differ} (not the --num-cases / --shape / --data-seed "
                  f"given); delete it or pick another --dataset-id to make a new one")
        plans = plans_file(preprocessed_root() / self.name)
        planned = set(load_json(plans).get("configurations", {})) if plans.is_file() else set()
        if not set(a.networks) <= planned or not self._preprocessed():
            say(f"planning and preprocessing {self.name} for {', '.join(a.networks)}")
            argv = ["-d", self.name, "-np", str(a.num_processes), "--network", *a.networks, "--no-progress"]
            if a.gpu_memory_gb is not None:
                argv += ["--gpu-memory-gb", str(a.gpu_memory_gb)]
            self._call("fpnunet.commands.plan_and_preprocess", argv, "plan_and_preprocess")

    def _preprocessed(self) -> bool:
        from fpnunet.plans.plan import Plan

        pre = preprocessed_root() / self.name
        try:
            plan = Plan.load(plans_file(pre))
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
        seen: set[tuple[str, str]] = set()
        for m in self.methods if only is None else [only]:
            if m.pretrain is None or (m.pretrain_network, m.pretrain) in seen:
                continue  # several methods fine-tune from one pretraining: run (or list) it once
            seen.add((m.pretrain_network, m.pretrain))
            fold = self.pretrain_dir(m.pretrain_network, m.pretrain)
            if (fold / "checkpoint_final.pth").is_file():
                say(f"pretraining {m.pretrain_network} on {m.pretrain}: done, skipped")
                continue
            argv = [self.name, "--network", m.pretrain_network, "--target", m.pretrain, *self._device_args(),
                    "--seed", str(a.pretrain_seed)]
            argv += ["--epochs", str(a.pretrain_epochs)] if a.pretrain_epochs else []
            argv += ["--iterations-per-epoch", str(a.iterations_per_epoch)] if a.iterations_per_epoch else []
            argv += ["--lr", str(a.pretrain_lr)] if a.pretrain_lr else []
            argv += ["--continue"] if (fold / "checkpoint_latest.pth").is_file() else []
            say(f"pretraining {m.pretrain_network} on {m.pretrain}")
            self._call("fpnunet.commands.pretrain", argv, f"pretrain__{m.pretrain_network}__{m.pretrain}",
                       results=self.work / "pretrain")

    # ------------------------------------------------------------------ fine-tuning / scratch
    def results_of(self, run: Run) -> Path:
        """The ``FPN_RESULTS`` root of a run."""
        return self.work / f"seed{run.seed}" / run.method.key

    def fold_dir(self, run: Run) -> Path:
        """The run's fold folder: ``scratch`` for ``--pretrained none``, ``ssl-FAF``/``ssl-SLO`` for a
        pretraining run's checkpoint (each results root holds one method only, so any tag found is
        accepted)."""
        from fpnunet.results_layout import fold_folder_name, model_folder_name

        tag = run.method.folder_tag
        suffix = "" if run.method.trainer == "supervised" else f"__{run.method.trainer}"
        dataset_dir = self.results_of(run) / self.name
        fold = fold_folder_name(run.fold)
        expected = dataset_dir / (model_folder_name(run.method.network, run.fraction, tag) + suffix) / fold
        if not expected.is_dir():
            pattern = f"{model_folder_name(run.method.network, run.fraction, '*')}{suffix}/{fold}"
            found = sorted(dataset_dir.glob(pattern))
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
        pretrained = "none" if m.pretrain is None else str(self.pretrain_dir(m.pretrain_network, m.pretrain)
                                                           / "checkpoint_final.pth")
        init = ["--pretrained", "none", "--encoder-weights", pretrained] if m.encoder_from else ["--pretrained",
                                                                                                   pretrained]
        argv = [self.name, str(run.fold), "--network", m.network, "--label-fraction", f"{run.fraction:g}",
                *init, "--seed", str(run.seed), "--trainer", m.trainer, *self._device_args()]
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
        self._call("fpnunet.commands.train", argv,
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
                if m.pretrain is not None and (m.pretrain_network, m.pretrain) not in pretrainings:
                    pretrainings[(m.pretrain_network, m.pretrain)] = pool.submit(self.pretrain, m)

            def fine_tune(run: Run, index: int) -> None:
                if run.method.pretrain is not None:
                    pretrainings[(run.method.pretrain_network, run.method.pretrain)].result()
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
                rows.append({"method": run.method.label, "network": run.method.network, "trainer": run.method.trainer,
                             "pretrain": run.method.pretrain or "none", "fraction": run.fraction, "fold": run.fold,
                             "seed": run.seed, "dice": read_dice(fold), "folder": str(fold)})
        return pd.DataFrame(rows, columns=RUN_COLUMNS)

    def run_nnunet(self) -> None:
        """nnU-Net v2 2D on the same folds and fractions (``--nnunet-bin``), into ``<out>/nnunet``."""
        run_nnunet(self.args, self.name, self.args.networks[0], self.out, self.work, self.args.device,
                   dry_run=self.args.dry_run)

    def report(self, argv: list[str]) -> pd.DataFrame:
        runs = self.collect()
        missing = len(self.runs) - len(runs)
        order = [m.label for m in self.methods]
        nnunet = nnunet_runs(self.out, list(self.args.fractions), list(self.args.folds), min(self.args.seeds),
                             self.args.nnunet_variants)
        if len(nnunet):  # beside fpnunet's rows (--nnunet-bin now or earlier)
            runs = pd.concat([runs, nnunet], ignore_index=True) if len(runs) else nnunet
            order += rows_in_order(nnunet)
        table = summarise(runs, order, list(self.args.fractions))
        paired = paired_differences(runs, order, list(self.args.fractions))
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "runs.csv", suffix=".csv") as tmp:
            runs.drop(columns=["folder"]).to_csv(tmp, index=False)
        with atomic_path(self.out / "label_efficiency.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(self.out / "paired_differences.csv", suffix=".csv") as tmp:
            paired.to_csv(tmp, index=False)
        settings = self.settings(argv)
        if len(nnunet):
            settings["nnunet"] = (f"benchmarks/nnunet_projection.py on the same folds and fractions, trainer "
                                  f"{', '.join(sorted(nnunet['trainer'].unique()))}, one run per fold (paired with "
                                  f"seed {min(self.args.seeds)}); its runs in {self.out / NNUNET_DIR / 'runs.csv'}")
        markdown = render_markdown(table, order, list(self.args.fractions), settings, missing=missing, paired=paired)
        write_atomic(self.out / "label_efficiency.md", lambda tmp: tmp.write_text(markdown), suffix=".md")
        if len(runs):
            plot(table, order, self.out / "label_efficiency.png")
        save_json(settings, self.out / "settings.json")
        print(markdown)
        print(f"wrote {self.out}/label_efficiency.md, label_efficiency.csv, paired_differences.csv, runs.csv"
              f"{', label_efficiency.png' if len(runs) else ''}")
        return table

    def settings(self, argv: list[str]) -> dict[str, Any]:
        a = self.args
        ds = dataset_file(raw_root() / self.name)
        made = load_json(ds).get("synthetic", {}) if ds.is_file() else {}
        return {"command": shlex.join(["python", "benchmarks/label_efficiency.py", *argv]),
                "dataset": self.name, "num_cases": made.get("n", a.num_cases),
                "shape_bda": made.get("shape_bda", list(a.shape)), "data_seed": made.get("seed", a.data_seed),
                "networks": a.networks, "pretrain_networks": a.pretrain_networks, "targets": a.targets,
                "encoder_ssl_networks": a.encoder_ssl_networks, "encoder_ssl_source": a.encoder_ssl_source,
                "cmc_networks": a.cmc_networks,
                "fractions": list(a.fractions), "folds": list(a.folds), "seeds": list(a.seeds),
                "epochs": a.epochs, "iterations_per_epoch": a.iterations_per_epoch, "lr": a.lr,
                "weight_decay": a.weight_decay,
                "pretrain_epochs": a.pretrain_epochs, "pretrain_lr": a.pretrain_lr, "device": a.device,
                "work": str(self.work)}
