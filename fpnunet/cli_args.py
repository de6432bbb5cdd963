"""One flag vocabulary for every ``fpn_*`` command, nnU-Net's spelling where the meaning matches.

Each ``add_*`` function adds one shared flag to a parser, so a flag is spelled, stored (``dest``),
typed and defaulted the same way in every command that takes it; :data:`VOCABULARY` is the
specification ``tests/test_cli_vocabulary.py`` checks every console script's parser against.

===================== ============================ ===================================================
flag                  dest                         meaning
===================== ============================ ===================================================
``-d/--dataset``      ``dataset``                  dataset id (900) or folder name (Dataset900_X)
``-f/--folds``        ``folds``                    folds (0 1 2 3 4, or ``all``), list
``-c/--config``       ``config``                   plan configuration (``--network`` kept as alias)
``-tr/--trainer``     ``trainer``                  registered trainer name
``-chk/--checkpoint`` ``checkpoint``               final, best or latest
``--save-probabilities`` / ``--npz`` ``save_probabilities``  also write probabilities
``-device/--device``  ``device``                   auto, cpu, cuda or cuda:N
``-np/--num-processes`` ``num_processes``          worker processes
``--seed``            ``seed``                     random seed, default 0
``--no-progress``     ``progress``                 no progress bars (``progress`` False)
``--enface-inputs``   ``enface_inputs``              en-face modalities as network input channels, list
                                                   (``--enface-channels`` kept as alias)
===================== ============================ ===================================================

The module imports nothing heavy (no torch, numpy, SimpleITK, pandas): every command builds its
parser and answers ``--help`` before the heavy imports, which come after ``parse_args``.

Stored names follow the same vocabulary: :data:`RENAMED_KWARGS` maps a network kwarg's older name
(in plans, checkpoints and model folders written before a rename) to today's.

Plan-dependent defaults: :func:`plan_values` reads the dataset's ``plans.json`` when ``--help``
comes with a dataset (``fpn_train 900 0 --help``), and :func:`plan_default` writes the resolved
value into the help (``default 40, from .../plans.json``), else ``default: from plans.json
(e.g. 40)``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from fpnunet import paths
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import plans_file

CHECKPOINTS = ("final", "best", "latest")
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"
HELP_FLAGS = ("-h", "--help")


RENAMED_KWARGS = {"enface_channels": "enface_inputs"}
"""Network kwargs under an older name (plans, checkpoints and model folders written before the
rename) -> today's name; read through :func:`current_kwargs`."""


def current_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every old kwarg name of :data:`RENAMED_KWARGS` under its current name."""
    return {RENAMED_KWARGS.get(k, k): v for k, v in kwargs.items()}


class _Any:
    """Marks a vocabulary default that each command chooses (shown in its help)."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


def fold_name(value: str) -> str:
    """argparse type of a fold: a number (0, 1, ...) or ``all``."""
    value = str(value).strip()
    if value.isdigit() or value == "all":
        return value
    raise argparse.ArgumentTypeError(f"invalid fold {value!r}: folds are numbers (0 1 2 3 4) or 'all'")


@dataclass(frozen=True)
class Flag:
    """One flag of the vocabulary: option strings (canonical first), dest, value type and default.

    ``nargs``: ``None`` one value, ``"+"`` a list, ``0`` a switch. ``default`` is :data:`ANY` where
    each command picks its own (documented in its help).
    """

    options: tuple[str, ...]
    dest: str
    type: Callable[[str], Any] | None = str
    nargs: int | str | None = None
    default: Any = None


VOCABULARY: dict[str, Flag] = {
    "dataset": Flag(("-d", "--dataset"), "dataset"),
    "folds": Flag(("-f", "--folds"), "folds", fold_name, "+", None),
    "config": Flag(("-c", "--config", "--network"), "config", str, None, ANY),
    "trainer": Flag(("-tr", "--trainer"), "trainer", str, None, ANY),
    "checkpoint": Flag(("-chk", "--checkpoint"), "checkpoint", str, None, "final"),
    "save_probabilities": Flag(("--save-probabilities", "--npz"), "save_probabilities", None, 0, False),
    "device": Flag(("-device", "--device"), "device", str, None, "auto"),
    "num_processes": Flag(("-np", "--num-processes"), "num_processes", int, None, ANY),
    "seed": Flag(("--seed",), "seed", int, None, 0),
    "progress": Flag(("--no-progress",), "progress", None, 0, True),
    "epochs": Flag(("--epochs",), "epochs", int, None, None),
    "resume": Flag(("--continue",), "resume", None, 0, False),
    "model": Flag(("--model",), "model", str, None, None),
    "output": Flag(("-o", "--output"), "output", str, None, ANY),
    "input": Flag(("-i", "--input"), "input", str, None, None),
    "file_ending": Flag(("--file-ending",), "file_ending", str, None, ANY),
    "enface_inputs": Flag(("--enface-inputs", "--enface-channels"), "enface_inputs", str, "+", None),
}
"""The specification: a flag spelled with any of these option strings must have this dest, type
and nargs in every command (and this default unless :data:`ANY`)."""


# ----------------------------------------------------------------------------- the shared flags
def add_dataset(p: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    """``-d/--dataset``."""
    p.add_argument(*VOCABULARY["dataset"].options, dest="dataset", required=required, metavar="DATASET",
                   help=help or "dataset id (900) or folder name (Dataset900_SynthGA)")


def add_dataset_positional(p: argparse.ArgumentParser) -> None:
    """``DATASET`` as the first positional argument, or ``-d DATASET`` (call :func:`take_dataset`
    after parsing)."""
    p.add_argument("dataset_pos", nargs="?", metavar="DATASET",
                   help="dataset id (900) or folder name (Dataset900_SynthGA); or give it as -d DATASET")
    p.add_argument(*VOCABULARY["dataset"].options, dest="dataset", default=None, metavar="DATASET",
                   help="the dataset as a flag (nnU-Net style), instead of the positional DATASET (default: none)")


def take_dataset(p: argparse.ArgumentParser, ns: argparse.Namespace, shift: str | None = None,
                 shift_type: Callable[[str], Any] = str) -> argparse.Namespace:
    """Merge the positional ``DATASET`` into ``ns.dataset``. With ``-d`` given, a lone positional
    is the next positional argument ``shift`` (``fpn_train -d 900 0``: fold 0), of ``shift_type``."""
    pos = vars(ns).pop("dataset_pos", None)
    if ns.dataset is None:
        if pos is None:
            p.error("the dataset is required: DATASET as the first argument, or -d DATASET")
        ns.dataset = pos
    elif pos is not None:
        if shift is not None and getattr(ns, shift) is None:
            try:
                setattr(ns, shift, shift_type(pos))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                p.error(f"argument {shift.upper()}: {exc}")
        elif str(pos) != str(ns.dataset):
            p.error(f"two datasets given: {pos} (positional) and -d {ns.dataset}")
    if shift is not None and getattr(ns, shift) is None:
        p.error(f"the {shift} is required ({p.prog} DATASET {shift.upper()})")
    return ns


def add_folds(p: argparse.ArgumentParser, help: str) -> None:
    """``-f/--folds F [F ...]`` (default ``None``: the command's choice, said in ``help``)."""
    p.add_argument(*VOCABULARY["folds"].options, dest="folds", type=fold_name, nargs="+", default=None,
                   metavar="FOLD", help=help)


def add_config(p: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``-c/--config`` (alias ``--network``): a plan configuration, named after its network."""
    p.add_argument(*VOCABULARY["config"].options, dest="config", default=default, metavar="CONFIG", help=help)


def add_trainer(p: argparse.ArgumentParser, help: str, default: str | None = None,
                choices: Sequence[str] | None = None) -> None:
    """``-tr/--trainer NAME``: a registered trainer."""
    p.add_argument(*VOCABULARY["trainer"].options, dest="trainer", default=default, choices=choices,
                   metavar="NAME", help=help)


def add_enface_inputs(p: argparse.ArgumentParser, help: str) -> None:
    """``--enface-inputs MOD [MOD ...]`` (``all``, ``none``; default ``None``: the plan's value)."""
    p.add_argument(*VOCABULARY["enface_inputs"].options, dest="enface_inputs", nargs="+", default=None,
                   metavar="MOD", help=help)


def add_checkpoint(p: argparse.ArgumentParser, help: str = "checkpoint to load (default final)") -> None:
    """``-chk/--checkpoint final|best|latest`` (default final)."""
    p.add_argument(*VOCABULARY["checkpoint"].options, dest="checkpoint", choices=CHECKPOINTS, default="final",
                   help=help)


def add_save_probabilities(p: argparse.ArgumentParser, help: str) -> None:
    """``--save-probabilities`` (alias ``--npz``, nnU-Net's)."""
    p.add_argument(*VOCABULARY["save_probabilities"].options, dest="save_probabilities", action="store_true",
                   help=help)


def add_device(p: argparse.ArgumentParser) -> None:
    """``-device/--device`` (default auto)."""
    p.add_argument(*VOCABULARY["device"].options, dest="device", default="auto", metavar="DEVICE",
                   help=f"{DEVICE_HELP} (default auto)")


def add_num_processes(p: argparse.ArgumentParser, default: int, help: str) -> None:
    """``-np/--num-processes N``."""
    p.add_argument(*VOCABULARY["num_processes"].options, dest="num_processes", type=int, default=default,
                   metavar="N", help=help)


def add_seed(p: argparse.ArgumentParser, help: str) -> None:
    """``--seed S`` (default 0)."""
    p.add_argument("--seed", type=int, default=0, help=f"{help} (default 0)")


def add_progress(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    """``--no-progress`` (stored as ``progress``, True by default)."""
    p.add_argument("--no-progress", dest="progress", action="store_false", help=help)


def default_num_processes() -> int:
    """Worker processes when ``-np`` is not given: ``min(4, CPUs)``."""
    return min(4, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- the data roots
def print_data_roots(file: TextIO | None = None) -> None:
    """The one line every command prints at its start: the three data roots it uses."""
    print(paths.roots_line(), file=file or sys.stdout, flush=True)


# ----------------------------------------------------------------------------- plan-dependent defaults
@dataclass
class PlanValues:
    """A configuration's values read from a dataset's ``plans.json`` (for ``--help``)."""

    path: str
    config: str
    batch_size: int | None
    precision: str | None
    training: dict[str, Any]


def wants_help(argv: Sequence[str] | None) -> bool:
    return any(a in HELP_FLAGS for a in (sys.argv[1:] if argv is None else argv))


def _option_value(argv: Sequence[str], options: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a in options and i + 1 < len(argv):
            return argv[i + 1]
        for o in options:
            if o.startswith("--") and a.startswith(o + "="):
                return a.split("=", 1)[1]
    return None


def plan_values(argv: Sequence[str] | None, positional: bool = False) -> PlanValues | None:
    """The plan values of the dataset (``-d``, or the first argument when ``positional``) and
    configuration (``-c``) named in ``argv``; ``None`` when absent or unreadable (help never fails)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    dataset = _option_value(argv, VOCABULARY["dataset"].options)
    if dataset is None and positional and argv and not argv[0].startswith("-"):
        dataset = argv[0]
    if dataset is None:
        return None
    try:
        path = plans_file(paths.preprocessed_root() / paths.resolve_dataset(dataset))
        with open(path) as f:
            plan = json.load(f)
        name = _option_value(argv, VOCABULARY["config"].options) or plan.get("default_configuration", "fpn")
        config = plan["configurations"][name]
    except (FPNError, OSError, ValueError, KeyError, TypeError):
        return None
    return PlanValues(str(path), name, config.get("batch_size"), config.get("precision"),
                      dict(config.get("training", {})))


def plan_default(values: PlanValues | None, key: str, example: Any, what: str = "") -> str:
    """Help text for a default taken from the plan: the resolved value when ``values`` holds it,
    else ``default: from plans.json (e.g. 40 epochs)``."""
    what = f" {what}" if what else ""
    if values is not None:
        value = values.batch_size if key == "batch_size" else values.precision if key == "precision" \
            else values.training.get(key)
        if value is not None:
            return f"default {value:g}{what}, from {values.path} [{values.config}]" if isinstance(value, float) \
                else f"default {value}{what}, from {values.path} [{values.config}]"
    shown = f"{example:g}" if isinstance(example, float) else str(example)
    return f"default: from plans.json, e.g. {shown}{what}"


def plan_epilog(values: PlanValues | None, example: str) -> str:
    """The help's closing line on plan-dependent defaults (``example``: a ``--help`` with a dataset)."""
    if values is not None:
        return f"Plan-dependent defaults above are those of configuration {values.config} in {values.path}."
    return (f"Defaults 'from plans.json' are the dataset's planned values: name the dataset to see them, "
            f"e.g. {example}.")
