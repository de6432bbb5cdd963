"""``fpn_convert_checkpoint PATH [PATH ...]``: convert checkpoints of an older fpnunet, once.

Checkpoints written before checkpoint format 2 pickled numpy's RNG state, so
``torch.load(weights_only=True)`` refuses them; :mod:`fpnunet.checkpoint_convert` reads such a
file with exactly those numpy names allowed and rewrites it in the weights-only format, in place
(``-o`` writes elsewhere). Run it only on files you trust: they come from your own older runs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError


@dataclass(frozen=True)
class ConvertConfig:
    """What ``fpn_convert_checkpoint`` converts, and where to."""

    paths: tuple[Path, ...]
    output: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpn_convert_checkpoint",
                                description="Convert checkpoints written by an older fpnunet (format 1) into the "
                                            "weights-only format, in place. Only for files you trust.")
    p.add_argument("paths", nargs="+", help="checkpoint files (.pth)")
    p.add_argument("-o", "--output", help="write the converted file here (one PATH only; default: in place)")
    return p


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """The checked flags (before any file is touched)."""
    if args.output and len(args.paths) != 1:
        raise FPNError("-o/--output takes a single input PATH")
    return ConvertConfig(tuple(Path(p) for p in args.paths), Path(args.output) if args.output else None)


def run(config: ConvertConfig) -> int:
    from fpnunet.checkpoint_convert import convert_checkpoint  # lazy: start-up time

    for path in config.paths:
        convert_checkpoint(path, config.output)
    return 0


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)

