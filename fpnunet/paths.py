"""Where datasets live: ``FPN_RAW``, ``FPN_PREPROCESSED``, ``FPN_RESULTS``.

Unset, a root is ``fpn_data/{raw,preprocessed,results}`` inside the nearest folder, from the
current directory upwards, that holds an ``fpn_data`` folder (as git finds ``.git``), so a
command run from a subfolder of a project still finds the project's data; when there is none,
``./fpn_data`` in the current directory (the first run needs no setup). Every command prints the
roots it uses (:func:`roots_line`); ``fpn_paths`` lists them with the datasets found. A dataset
is named by its id (``900``) or its folder name (``Dataset900_SynthGA``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from fpnunet.errors import FPNError

_DATASET_RE = re.compile(r"^Dataset(\d{3,})_(\S+)$")


DATA_FOLDER = "fpn_data"
ROOT_VARIABLES = {"raw": "FPN_RAW", "preprocessed": "FPN_PREPROCESSED", "results": "FPN_RESULTS"}
"""The three roots, keyed by their sub-folder name under ``fpn_data``, and their variables."""


def default_data_folder(start: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """``(folder, found)``: the nearest ``fpn_data`` folder from ``start`` (default: the current
    directory) upwards, ``found=True``; else ``start/fpn_data``, ``found=False``."""
    here = Path(start if start is not None else os.getcwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / DATA_FOLDER).is_dir():
            return folder / DATA_FOLDER, True
    return here / DATA_FOLDER, False


def root(kind: str) -> Path:
    """The ``raw``, ``preprocessed`` or ``results`` root: its variable, else the default above."""
    value = os.environ.get(ROOT_VARIABLES[kind])
    if value:
        return Path(value).expanduser().absolute()
    return default_data_folder()[0] / kind


def raw_root() -> Path:
    return root("raw")


def preprocessed_root() -> Path:
    return root("preprocessed")


def results_root() -> Path:
    return root("results")


def root_origin(kind: str) -> str:
    """How a root was chosen: its variable's name, or :func:`default_origin`."""
    var = ROOT_VARIABLES[kind]
    return var if os.environ.get(var) else default_origin()


def roots_line() -> str:
    """One line naming the three roots a command uses (printed at every command's start)."""
    parts = []
    for kind, var in ROOT_VARIABLES.items():
        mark = "" if os.environ.get(var) else "*"
        parts.append(f"{var}={root(kind)}{mark}")
    line = "data roots: " + "  ".join(parts)
    if any(not os.environ.get(v) for v in ROOT_VARIABLES.values()):
        line += f"  (*variable unset: {default_origin()}; see fpn_paths)"
    return line


def default_origin() -> str:
    """Where the default roots come from, in words."""
    folder, found = default_data_folder()
    if not found:
        return "./fpn_data of the current folder, not created yet"
    if folder.parent != Path(os.getcwd()).absolute():
        return f"nearest fpn_data folder above the current one, {folder}"
    return "./fpn_data of the current folder"


def dataset_id_of(folder_name: str) -> int | None:
    m = _DATASET_RE.match(folder_name)
    return int(m.group(1)) if m else None


def resolve_dataset(name: str | int) -> str:
    """Return the dataset folder name (``Dataset900_SynthGA``) for an id or a folder name.

    Looks in the raw, preprocessed and results roots, in that order.
    """
    name = str(name).strip()
    if _DATASET_RE.match(name):
        return name
    if not name.isdigit():
        raise FPNError(
            f"dataset {name!r} is neither an id (e.g. 900) nor a folder name (e.g. Dataset900_SynthGA)"
        )
    wanted = int(name)
    found: set[str] = set()
    for root in (raw_root(), preprocessed_root(), results_root()):
        if root.is_dir():
            found |= {p.name for p in root.iterdir() if p.is_dir() and dataset_id_of(p.name) == wanted}
    if not found:
        raise FPNError(
            f"no dataset with id {wanted} in FPN_RAW={raw_root()}, FPN_PREPROCESSED={preprocessed_root()} "
            f"or FPN_RESULTS={results_root()} (expected a folder named Dataset{wanted:03d}_NAME)"
        )
    if len(found) > 1:
        raise FPNError(f"dataset id {wanted} is ambiguous: {sorted(found)}; name the folder instead")
    return found.pop()


def raw_dir(dataset: str | int) -> Path:
    return raw_root() / resolve_dataset(dataset)


def preprocessed_dir(dataset: str | int) -> Path:
    return preprocessed_root() / resolve_dataset(dataset)


def results_dir(dataset: str | int) -> Path:
    return results_root() / resolve_dataset(dataset)
