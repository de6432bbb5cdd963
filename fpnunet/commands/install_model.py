"""``fpn_install_model model.zip``: install a model package from another site into ``$FPN_RESULTS``.

::

    fpn_install_model model.zip [--name MODEL_FOLDER_NAME] [--overwrite]

The package (:mod:`fpnunet.model_package`) is checked before anything is installed: every file
against the manifest's SHA-256, nothing outside its folder (absolute paths, ``..``, links), nothing
executable or pickled, a format version this fpnunet reads. It lands as
``$FPN_RESULTS/<DatasetXXX_Name>/<model folder>/`` with each fold's weights converted to the
checkpoint ``fpn_predict`` reads, so ``fpn_predict -d XXX --model NAME`` (or ``-m``) runs it.

A pipeline package (``fpn_export_model -d ID --best``, :mod:`fpnunet.pipeline_package`) installs
every member model folder and ``chosen_pipeline.json`` into ``$FPN_RESULTS/<DatasetXXX_Name>/``, so
``fpn_predict -d XXX --best`` runs the chosen pipeline (``--name`` does not apply to it).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.model_card import summary_line
from fpnunet.model_package import install_package, read_card
from fpnunet.paths import results_root


@dataclass(frozen=True)
class InstallConfig:
    """The checked flags of ``fpn_install_model``."""

    package: Path
    name: str | None = None
    overwrite: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpn_install_model",
                                description="Check a model package (.zip from fpn_export_model) and install it into "
                                            "$FPN_RESULTS so that fpn_predict runs it.")
    p.add_argument("package", help="the model package (.zip)")
    p.add_argument("--name", help="install under this model folder name (default: the exporter's)")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model folder of that name")
    return p


def config_from_args(args: argparse.Namespace) -> InstallConfig:
    """Flags checked before anything is read."""
    package = Path(args.package)
    if not package.is_file():
        raise FPNError(f"{package}: model package not found")
    if args.name is not None and (not args.name or "/" in args.name or "\\" in args.name or args.name.startswith(".")):
        raise FPNError(f"--name {args.name!r}: must be a plain folder name")
    return InstallConfig(package, args.name, args.overwrite)


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)


def run(config: InstallConfig) -> int:
    from fpnunet.pipeline_package import install_pipeline, is_pipeline_package  # lazy: start-up time

    if is_pipeline_package(config.package):
        if config.name is not None:
            raise FPNError("--name: not for a pipeline package (the chosen pipeline names its model folders)")
        folder = install_pipeline(config.package, results_root(), overwrite=config.overwrite)
        print(f"fpn_install_model: installed the chosen pipeline into {folder}; predict with: "
              f"fpn_predict -d {folder.name} --best -i IN -o OUT", file=sys.stderr)
        return 0
    target = install_package(config.package, results_root(), overwrite=config.overwrite, name=config.name)
    card = read_card(target)
    if card is not None:
        print(summary_line(card), file=sys.stderr)
    print(f"fpn_install_model: installed {target}; predict with: fpn_predict -i IN -o OUT -m {target}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
