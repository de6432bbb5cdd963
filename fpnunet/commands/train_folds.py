"""``fpn_train_folds DATASET``: train several folds at once, one fold per device, the rest queued.

::

    fpn_train_folds 900                                   # folds 0-4 over every local GPU
    fpn_train_folds 900 --folds 0 1 2 --devices cuda:0 cuda:1 --epochs 100 --pretrained none
    fpn_train_folds 900 --devices cpu cpu                 # two CPU processes (tests, small machines)
    fpn_train_folds -d 900 -c all                         # every candidate configuration of the plan
    fpn_train_folds -d 900 -c fpn-scratch fpn-ssl-FAF --epochs 100 --pretrain-epochs 100

``-c all`` or candidate names (``fpn_plan_and_preprocess`` lists them; a plan configuration name
such as ``-c omnia`` still trains that configuration as before): first the pretraining runs the
candidates fine-tune from, then five folds of each candidate with ``--npz`` (the out-of-fold
probabilities ``fpn_find_best_configuration`` compares), fold by fold across the candidates, all
queued over ``--devices``; a fine-tuned candidate's folds start as soon as its pretraining is done; what is
finished is skipped, what was killed is continued (:mod:`fpnunet.training.candidate_runs`).

nnU-Net's advice for several GPUs: rather than DDP, train the five folds side by side, one per
GPU. Each fold runs as its own ``fpn_train DATASET FOLD --device DEV --no-progress [flags]``
process (the other flags are passed through and checked first); as soon as a device is free the
next fold in the queue starts on it. Every line a fold prints (header, per-epoch line, final
validation) is streamed prefixed with ``[fold K @ DEVICE]``, and a summary follows. The exit
status is 1 when a fold failed, naming the failed folds and their last message; the other folds
still finish. A device may be named twice (two folds share it, e.g. ``cpu cpu``); CPU folds get
an equal share of the cores (``OMP_NUM_THREADS``) unless that variable is set.
"""
from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from fpnunet import cli_args
from fpnunet.cli_utils import resolve_device, run_cli
from fpnunet.commands.train import build_parser as train_parser
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import plans_file

PROGRAM = "fpn_train_folds"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
TAIL_LINES = 20
FORBIDDEN = ("--device", "--gpus", "--val")
"""fpn_train flags that make no sense here (the device is assigned per fold)."""


@dataclass
class FoldResult:
    fold: str
    device: str
    returncode: int | None = None
    seconds: float = 0.0
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_error(self) -> str:
        for line in reversed(self.tail):
            if line.startswith("error:") or "Error" in line:
                return line
        return self.tail[-1] if self.tail else f"exit status {self.returncode}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROGRAM, allow_abbrev=False,
        description="Train several folds in parallel, one per device; any other flag goes to "
                    "fpn_train (e.g. --epochs, --pretrained, --label-fraction, --continue).")
    p.add_argument("dataset", help="dataset id (900) or folder name (or -d DATASET)")
    cli_args.add_folds(p, help="folds to train (default 0 1 2 3 4)")
    p.add_argument(*cli_args.VOCABULARY["config"].options, dest="config", nargs="+", default=None, metavar="NAME",
                   help="candidate configurations to train (all, or names from plans.json 'candidates'), or one plan "
                        "configuration passed to fpn_train (default: fpn_train's -c)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="with candidates: epochs of the pretraining runs (default: the plan's pretrain_epochs)")
    p.add_argument("--pretrain-iterations", type=int, default=None,
                   help="with candidates: iterations per epoch of the pretraining runs (default: the plan's)")
    p.add_argument("--devices", nargs="+",
                   help="devices, one fold at a time on each (default: every CUDA device, else one cpu); "
                        "repeat a device to run two folds on it")
    # no cli_args.add_device: the per-fold devices are --devices, and --device belongs to fpn_train
    return p


def default_devices() -> list[str]:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def dataset_first(argv: list[str]) -> list[str]:
    """``-d 900 ...`` -> ``900 ...`` (the other flags go to fpn_train unparsed, so a positional
    DATASET after them could be mistaken for one of their values)."""
    for i, arg in enumerate(argv):
        if arg in ("-d", "--dataset") and i + 1 < len(argv):
            return [argv[i + 1], *argv[:i], *argv[i + 2:]]
        if arg.startswith("--dataset="):
            return [arg.split("=", 1)[1], *argv[:i], *argv[i + 1:]]
    return argv


def check_arguments(dataset: str, folds: list[str], devices: list[str], rest: list[str]) -> None:
    """Every flag checked before any fold starts: folds, devices, the flags passed to fpn_train."""
    for fold in folds:
        if not (fold.isdigit() or fold == "all"):
            raise FPNError(f"--folds {fold}: folds are numbers (0 1 2 3 4) or 'all'")
    if len(set(folds)) != len(folds):
        raise FPNError(f"--folds {' '.join(folds)}: a fold is named twice")
    for device in devices:
        if device == "auto":
            raise FPNError("--devices auto: name the devices (cuda:0 cuda:1 ..., or cpu)")
        resolve_device(device)
    for flag in rest:
        if flag.split("=")[0] in FORBIDDEN:
            raise FPNError(f"{flag}: not a flag of {PROGRAM} (devices are given with --devices; --val: run "
                           f"fpn_train DATASET FOLD --val)")
    parser = train_parser()
    parser.exit_on_error = False
    try:
        parser.parse_args([dataset, folds[0], *rest])
    except (argparse.ArgumentError, SystemExit) as exc:
        raise FPNError(f"flags for fpn_train: {exc if isinstance(exc, argparse.ArgumentError) else ' '.join(rest)}"
                       f" (see fpn_train --help)") from None


def fold_command(dataset: str, fold: str, device: str, rest: list[str]) -> list[str]:
    return [sys.executable, "-m", "fpnunet.commands.train", dataset, fold, *rest, "--device", device,
            "--no-progress"]


def _stream(proc: subprocess.Popen, result: FoldResult, prefix: str, done: queue.Queue, lock: threading.Lock,
            t0: float) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        result.tail.append(line)
        with lock:
            print(f"{prefix} {line}", flush=True)
    result.returncode = proc.wait()
    result.seconds = time.perf_counter() - t0
    done.put(result)


def run_folds(dataset: str, folds: list[str], devices: list[str], rest: list[str]) -> list[FoldResult]:
    """Train ``folds`` on ``devices`` (one at a time per entry), streaming their output; returns the results."""
    return run_jobs({f: fold_command(dataset, f, "{device}", rest) for f in folds}, devices, "fold ")


def next_runnable(waiting: deque, needs: dict[str, str], results: dict[str, FoldResult],
                  dropped: list[str]) -> str | None:
    """Take the first waiting key whose ``needs`` entry (another key) has finished well (or that
    needs nothing queued); a key whose need failed or was dropped moves to ``dropped``."""
    for key in list(waiting):
        need = needs.get(key)
        if need in waiting or (need in results and results[need].returncode is None):
            continue  # its need is still queued or running
        waiting.remove(key)
        if need in dropped or (need in results and not results[need].ok):
            dropped.append(key)
            continue
        return key
    return None


def run_jobs(commands: dict[str, list[str]], devices: list[str], prefix_word: str = "",
             needs: dict[str, str] | None = None) -> list[FoldResult]:
    """Run ``commands`` (by key; ``"{device}"`` in one is replaced by the device) on ``devices``,
    one at a time per entry, streaming their output as ``[<prefix_word>KEY @ DEVICE] line``.
    ``needs`` maps a key to the key that must finish well first: the first runnable command in
    order takes a free device; one whose need failed is not run (absent from the results)."""
    folds = list(commands)
    needs, dropped = dict(needs or {}), []
    cpu_slots = sum(d == "cpu" for d in devices)
    env = dict(os.environ)
    if cpu_slots and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_slots))
    waiting = deque(folds)
    free = deque(range(len(devices)))
    done: queue.Queue = queue.Queue()
    lock = threading.Lock()
    running: dict[str, tuple[int, subprocess.Popen]] = {}
    results: dict[str, FoldResult] = {}
    try:
        while waiting or running:
            while free and (fold := next_runnable(waiting, needs, results, dropped)) is not None:
                slot = free.popleft()
                device = devices[slot]
                result = results[fold] = FoldResult(fold, device)
                prefix = f"[{prefix_word}{fold} @ {device}]"
                with lock:
                    print(f"{prefix} started ({len(waiting)} fold(s) queued)", flush=True)
                command = [device if part == "{device}" else part for part in commands[fold]]
                proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
                running[fold] = (slot, proc)
                threading.Thread(target=_stream, args=(proc, result, prefix, done, lock, time.perf_counter()),
                                 daemon=True).start()
            if not running:  # what is left waits on work that was dropped
                break
            finished: FoldResult = done.get()
            slot, _ = running.pop(finished.fold)
            free.append(slot)
            status = "done" if finished.ok else f"FAILED (exit status {finished.returncode}): {finished.last_error()}"
            with lock:
                print(f"[{prefix_word}{finished.fold} @ {finished.device}] {status} after {finished.seconds:.0f} s",
                      flush=True)
    finally:
        for _, proc in running.values():  # interrupted: stop the folds still running
            if proc.poll() is None:
                proc.terminate()
        for _, proc in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return [results[f] for f in folds if f in results]


@dataclass(frozen=True)
class FoldsConfig:
    """The checked flags: the dataset, its folds, the device slots and the flags passed to fpn_train."""

    dataset: str
    folds: tuple[str, ...]
    devices: tuple[str, ...]
    rest: tuple[str, ...]
    candidates: tuple[str, ...] = ()
    pretrain_flags: tuple[str, ...] = ()
    folds_given: bool = True
    """``--folds`` was given (else, with candidates, the folds are those of the dataset's splits)."""


CANDIDATE_FLAGS = ("--pretrained", "--trainer", "-tr", "--weight-decay", "--enface-inputs", "--enface-channels",
                   "--npz", "--save-probabilities", "--val", "-c", "--config", "--network")
"""fpn_train flags a candidate sets itself."""


def candidate_names(dataset: str, names: list[str]) -> tuple[list[str], list[str]]:
    """``(candidates, extra fpn_train flags)`` of ``-c NAMES``: ``all`` or candidate names, or one
    plan configuration (the flag is then passed to fpn_train, as before candidates existed)."""
    from fpnunet.paths import preprocessed_dir  # lazy: start-up time
    from fpnunet.plans.plan import Plan  # lazy: start-up time

    plans = plans_file(preprocessed_dir(dataset))
    plan = Plan.load(plans)
    known = [c.name for c in plan.candidates]
    if names == ["all"]:
        if not known:
            raise FPNError(f"{plans} lists no candidate configuration; run fpn_plan_and_preprocess -d {dataset}")
        return known, []
    if len(names) == 1 and names[0] not in known and names[0] in plan.configurations:
        return [], ["-c", names[0]]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FPNError(f"-c {' '.join(unknown)}: not a candidate of {plans} (candidates: {', '.join(known) or 'none'}; "
                       "or give 'all', or one plan configuration)")
    return list(dict.fromkeys(names)), []

def config_from_args(parsed: tuple[argparse.Namespace, list[str]]) -> FoldsConfig:
    """``parse_known_args``'s pair -> the checked :class:`FoldsConfig` (every flag, fpn_train's included)."""
    args, rest = parsed
    devices = list(args.devices) if args.devices else default_devices()
    folds = [str(f) for f in (args.folds or DEFAULT_FOLDS)]
    candidates: list[str] = []
    pretrain: list[str] = []
    for flag, value in (("--pretrain-epochs", args.pretrain_epochs),
                        ("--pretrain-iterations", args.pretrain_iterations)):
        if value is not None and value < 1:
            raise FPNError(f"{flag} {value}: must be at least 1")
    if args.config:
        candidates, extra = candidate_names(args.dataset, list(args.config))
        rest = extra + rest
    if candidates:
        taken = [f for f in rest if f.split("=")[0] in CANDIDATE_FLAGS]
        if taken:
            raise FPNError(f"{taken[0]}: each candidate sets it itself (see plans.json 'candidates'; "
                           "fpn_plan_and_preprocess --add-candidate adds one)")
        pretrain = ([f"--epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []) + (
            [f"--iterations-per-epoch={args.pretrain_iterations}"] if args.pretrain_iterations else [])
    elif args.pretrain_epochs or args.pretrain_iterations:
        raise FPNError("--pretrain-epochs/--pretrain-iterations: only with candidates (-c all or names)")
    check_arguments(args.dataset, folds, devices, rest)
    return FoldsConfig(args.dataset, tuple(folds), tuple(devices), tuple(rest), tuple(candidates), tuple(pretrain),
                       bool(args.folds))


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = dataset_first(list(sys.argv[1:] if argv is None else argv))
    config = config_from_args(build_parser().parse_known_args(argv))
    cli_args.print_data_roots()
    return run(config)


def run_candidates(config: FoldsConfig) -> int:
    """The candidates' pretraining runs, then their folds; finished work skipped (module docstring)."""
    from fpnunet.paths import preprocessed_dir, results_dir  # lazy: start-up time
    from fpnunet.plans.plan import Plan  # lazy: start-up time
    from fpnunet.training.candidate_runs import PRETRAIN_MODULE, queue_jobs, split_folds  # lazy: start-up time

    plan = Plan.load(plans_file(preprocessed_dir(config.dataset)))
    candidates = [plan.candidate(n) for n in config.candidates]
    results = results_dir(config.dataset)
    devices, failed, folds = list(config.devices), [], list(config.folds)
    if not config.folds_given and candidates:  # five folds, or fewer when the labelled cases are from fewer patients
        folds = split_folds(config.dataset, candidates[0].config)

    def command(job) -> list[str]:
        return [sys.executable, "-m", job.module, *job.args, "--device", "{device}", "--no-progress"]

    print(f"{PROGRAM}: {len(candidates)} candidate(s) {' '.join(config.candidates)}, folds {' '.join(folds)}, "
          f"on {len(devices)} device slot(s) {' '.join(devices)}", flush=True)
    # one queue: the pretrainings, then the folds across the candidates, a fine-tuned fold as soon as its pretraining
    jobs, done = queue_jobs(config.dataset, results, candidates, folds, list(config.rest),
                            list(config.pretrain_flags))
    for line in done:
        print(line, flush=True)
    needs = {j.label: j.needs for j in jobs if j.needs}
    ran = run_jobs({j.label: command(j) for j in jobs}, devices, needs=needs) if jobs else []
    outcome = {r.fold: r.ok for r in ran}
    lost = {name for j in jobs if j.module == PRETRAIN_MODULE and not outcome.get(j.label, False)
            for name in j.candidates}
    failed += [f"{r.fold}: {r.last_error()}" for r in ran if not r.ok]
    print(f"summary: {sum(r.ok for r in ran)} run(s) done, {len(done)} already finished, {len(failed)} failed"
          + "".join(f"\n  not trained (pretraining failed): {n}" for n in sorted(lost)))
    if failed:
        print(f"error: {len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"next: fpn_find_best_configuration -d {config.dataset}")
    return 0


def run(config: FoldsConfig) -> int:
    if config.candidates:
        return run_candidates(config)
    folds, devices = list(config.folds), list(config.devices)
    print(f"{PROGRAM}: {len(folds)} fold(s) {' '.join(folds)} on {len(devices)} device slot(s) {' '.join(devices)}",
          flush=True)
    results = run_folds(config.dataset, folds, devices, list(config.rest))
    print("summary:")
    for r in results:
        print(f"  fold {r.fold} ({r.device}): {'ok' if r.ok else 'FAILED'} in {r.seconds:.0f} s")
    failed = [r for r in results if not r.ok]
    if failed:
        detail = "; ".join(f"fold {r.fold}: {r.last_error()}" for r in failed)
        print(f"error: {len(failed)} of {len(results)} fold(s) failed: {' '.join(r.fold for r in failed)} ({detail})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
