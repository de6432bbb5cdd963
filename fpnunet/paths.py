"""Where datasets live: ``FPN_RAW``, ``FPN_PREPROCESSED``, ``FPN_RESULTS``.

Unset, they default to ``./fpn_data/{raw,preprocessed,results}`` (relative to the current
directory) so the first run needs no setup. A dataset is named by its id (``900``) or its
folder name (``Dataset900_SynthGA``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from fpnunet.errors import FPNError

_DATASET_RE = re.compile(r"^Dataset(\d{3,})_(\S+)$")


def raw_root() -> Path:
    return Path(os.environ.get("FPN_RAW", "fpn_data/raw")).absolute()


def preprocessed_root() -> Path:
    return Path(os.environ.get("FPN_PREPROCESSED", "fpn_data/preprocessed")).absolute()


def results_root() -> Path:
    return Path(os.environ.get("FPN_RESULTS", "fpn_data/results")).absolute()


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
