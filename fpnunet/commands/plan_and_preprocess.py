"""``fpn_plan_and_preprocess``: verify + fingerprint a raw dataset, plan it, preprocess it.

::

    fpn_plan_and_preprocess -d 900 [-np 4] [--verify-only] [--clean] [--gpu-memory-gb 11]
                            [-c auto | fpn ...] [--calibrate] [--no-preprocess] [--no-progress]

A broken dataset stops with one line per problem and a non-zero exit status; nothing is written
to the preprocessed folder then. Otherwise it writes ``dataset.json`` (a copy),
``dataset_fingerprint.json``, ``plans.json`` and one folder per ``data_identifier`` into
``$FPN_PREPROCESSED/DatasetXXX_Name/`` (see docs/layout.md).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace

from fpnunet import cli_args, paths
from fpnunet.atomic import save_json
from fpnunet.cli_utils import resolve_device, run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.plans.candidates import (
    AUTO,
    DatasetFacts,
    auto_configurations,
    dataset_facts,
    format_candidates,
    merge_candidates,
    parse_candidate,
    propose_candidates,
)
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import plans_file


@dataclass(frozen=True)
class PreprocessConfig:
    """The checked flags of ``fpn_plan_and_preprocess``."""

    dataset: str
    num_processes: int
    verify_only: bool = False
    clean: bool = False
    gpu_memory_gb: float | None = None
    configs: tuple[str, ...] = ("auto",)
    calibrate: bool = False
    no_preprocess: bool = False
    progress: bool = True
    add_candidates: tuple[str, ...] = ()
    drop_candidates: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_plan_and_preprocess",
        description="Verify and fingerprint a raw dataset, write plans.json and the preprocessed data.",
    )
    cli_args.add_dataset(p)
    cli_args.add_num_processes(p, cli_args.default_num_processes(),
                               help="worker processes for verification and preprocessing "
                                    f"(default min(4, CPUs) = {cli_args.default_num_processes()})")
    p.add_argument("--verify-only", action="store_true", help="verify the dataset, print a summary, write nothing")
    p.add_argument("--clean", action="store_true", help="redo every preprocessed case (default: skip finished ones)")
    p.add_argument("--gpu-memory-gb", type=float, default=None, metavar="GB",
                   help="GPU memory the plan may use (default: the free memory of the CUDA device, else 8 GB)")
    p.add_argument(*cli_args.VOCABULARY["config"].options, dest="config", nargs="+", default=["auto"], metavar="CONFIG",
                   help="configurations to plan: registered network names, or auto: fpn and lachinov, plus omnia "
                        "and plane2d when every training and test case has every en-face image (default: auto)")
    p.add_argument("--calibrate", action="store_true",
                   help="let the planner measure one real training step per configuration (needs CUDA)")
    p.add_argument("--no-preprocess", action="store_true", help="stop after writing plans.json")
    p.add_argument("--add-candidate", dest="add_candidates", action="append", default=[], metavar="SPEC",
                   help="add a candidate configuration NAME:CONFIG[:pretrained=FAF|SLO|none][:wd=W][:enface=SLO+FAF]"
                        "[:trainer=cmc] (repeatable; kept when planning again; default: none)")
    p.add_argument("--drop-candidate", dest="drop_candidates", action="append", default=[], metavar="NAME",
                   help="leave a candidate configuration out (repeatable; kept out when planning again; default: none)")
    cli_args.add_progress(p)
    return p


def runtime_note(plan: Plan, device: str | None = None) -> str:
    """What training on this machine will actually use: the device ``auto`` picks and its precision
    (the plan's precision applies on CUDA only; on the CPU ``--precision auto`` decides as
    :func:`fpnunet.precision.resolve_cpu_precision` does, ``FPN_CPU_BF16`` included)."""
    device = device or resolve_device("auto")
    planned = sorted({c.precision for c in plan.configurations.values()})
    if device.startswith("cuda"):
        return f"training on this machine: device {device}, precision {'/'.join(planned)} (the plan's)"
    from fpnunet.precision import resolve_cpu_precision  # lazy: start-up time

    precision, reason = resolve_cpu_precision("bf16" if "bf16" in planned else "fp32")
    return (f"training on this machine: device {device}, precision {precision} (no CUDA here: the plan's "
            f"{'/'.join(planned)} applies on a CUDA GPU, as do its batch and patch for the GPU memory above; "
            f"--precision auto on this CPU: {reason})")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    if args.num_processes < 1:
        raise FPNError(f"-np must be at least 1, got {args.num_processes}")
    gb = args.gpu_memory_gb
    if gb is not None and not (math.isfinite(gb) and gb > 0):
        raise FPNError(f"--gpu-memory-gb must be a finite number of GiB > 0, got {gb}")
    for spec in args.add_candidates:
        parse_candidate(spec)  # a bad spec stops before anything is written
    from fpnunet.networks.registry import available_networks  # lazy: start-up time (torch)

    known = available_networks()
    for name in args.config:
        if name != AUTO and name not in known:
            raise FPNError(f"-c {name}: not a registered network; use auto or one of {', '.join(known)}")
    return PreprocessConfig(args.dataset, args.num_processes, args.verify_only, args.clean, args.gpu_memory_gb,
                            tuple(args.config), args.calibrate, args.no_preprocess, args.progress,
                            tuple(args.add_candidates), tuple(args.drop_candidates))


def run(config: PreprocessConfig) -> int:
    from fpnunet.plans.fingerprint import fingerprint_summary, verify_and_fingerprint  # lazy: start-up time
    from fpnunet.plans.planner import plan_dataset  # lazy: start-up time
    from fpnunet.preprocessing.storage import preprocess_dataset  # lazy: start-up time
    from fpnunet.raw_dataset import copy_dataset_json, load_dataset_json  # lazy: start-up time

    name = paths.resolve_dataset(config.dataset)
    raw = paths.raw_root() / name
    if not raw.is_dir():
        raise FPNError(f"{raw}: raw dataset folder not found (FPN_RAW={paths.raw_root()})")
    show = config.progress
    t0 = time.perf_counter()
    fp = verify_and_fingerprint(raw, num_processes=config.num_processes, show_progress=show)
    print(f"verified {raw} in {time.perf_counter() - t0:.1f} s")
    print(fingerprint_summary(fp))
    if config.verify_only:
        return 0

    info = load_dataset_json(raw)
    out = paths.preprocessed_root() / name
    out.mkdir(parents=True, exist_ok=True)
    copy_dataset_json(raw, out)
    save_json(fp, out / "dataset_fingerprint.json")

    facts = dataset_facts(fp, raw, info, [])  # the en-face images of every case, read once
    networks = planned_configurations(config.configs, facts)
    plans_path = plans_file(out)
    existing = Plan.load(plans_path) if plans_path.is_file() else None
    extra = {"calibrate": True} if config.calibrate else {}
    plan = plan_dataset(fp, info, gpu_memory_gb=config.gpu_memory_gb, networks=networks, existing=existing,
                        **extra)
    print(choose_candidates(plan, existing, replace(facts, configurations=tuple(plan.configurations)), config))
    plan.save(plans_path)
    idents = ", ".join(f"{n} -> {c.data_identifier}/ (depth {c.depth})" for n, c in plan.configurations.items())
    print(f"wrote {plans_path}: depth crop {plan.depth_crop} raw rows; {idents}")
    print(runtime_note(plan))
    if config.no_preprocess:
        return 0

    summary = preprocess_dataset(name, plan, num_processes=config.num_processes, clean=config.clean,
                                 show_progress=show, fingerprint=fp)
    for ident, s in summary.items():
        print(f"preprocessed {ident}: {s['written']} case(s) written, {s['skipped']} up to date "
              f"({s['seconds']:.1f} s) -> {s['folder']}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def planned_configurations(configs: tuple[str, ...], facts: DatasetFacts) -> list[str]:
    """The ``-c`` names with ``auto`` expanded (:func:`fpnunet.plans.candidates.auto_configurations`;
    the choice and its reason are printed)."""
    if AUTO not in configs:
        return list(configs)
    auto, reason = auto_configurations(facts)
    names: list[str] = []
    for c in configs:
        names += auto if c == AUTO else [c]
    names = list(dict.fromkeys(names))
    print(f"configurations: {', '.join(names)} (auto: {reason})")
    return names


def choose_candidates(plan: Plan, existing: Plan | None, facts: DatasetFacts, config: PreprocessConfig) -> str:
    """Set ``plan.candidates`` (the rules' list, the user's additions, minus the dropped names);
    returns the listing to print."""
    proposed, notes = propose_candidates(facts, plan.configuration().training.weight_decay)
    previous = list(existing.candidates) if existing is not None else []
    added = [parse_candidate(s) for s in config.add_candidates]
    for c in added:
        plan.configuration(c.config)  # an unplanned configuration is an error naming it
    dropped = sorted(set(plan.dropped_candidates) - {c.name for c in added} | set(config.drop_candidates))
    previous = [c for c in previous if c.name not in {a.name for a in added}] + added
    plan.candidates = merge_candidates(proposed, previous, dropped)
    plan.dropped_candidates = dropped
    if dropped:
        notes.append(f"dropped by the user: {', '.join(dropped)}")
    return format_candidates(plan.candidates, notes)


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)


if __name__ == "__main__":
    main()
