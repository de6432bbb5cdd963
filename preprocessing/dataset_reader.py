"""The one reader of a preprocessed ``<data_identifier>`` folder, beside its writer (:mod:`.storage`).

It knows the file names (docs/layout.md)::

    CASE.npy  CASE.json  CASE_seg.npy (labelled)  CASE_<MOD>.npy (each en-face modality in CASE.json)
    preprocessing_complete.json      the completion record, written LAST by fpn_plan_and_preprocess

The record lists every case and what it has (``labelled``, ``enface``). A folder is usable only
when the record exists and every case it lists has all its files; otherwise
:func:`open_preprocessed` refuses it with one message naming what is missing and telling to rerun
``fpn_plan_and_preprocess`` (a killed preprocessing leaves no record: the writer deletes it before
touching any case and writes it after the last one). Training, pretraining and the splits read
their case lists from here only, so they never run on, or write splits over, a partial folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpnunet.atomic import load_json, save_json
from fpnunet.errors import FPNError

RECORD_FILE = "preprocessing_complete.json"
RECORD_VERSION = 1


# ----------------------------------------------------------------------------- file names
def volume_file(folder: Path, case: str) -> Path:
    return Path(folder) / f"{case}.npy"


def properties_file(folder: Path, case: str) -> Path:
    return Path(folder) / f"{case}.json"


def label_file(folder: Path, case: str) -> Path:
    return Path(folder) / f"{case}_seg.npy"


def enface_file(folder: Path, case: str, modality: str) -> Path:
    return Path(folder) / f"{case}_{modality}.npy"


def case_files(folder: Path, case: str, labelled: bool, enface: list[str]) -> list[Path]:
    """Every file case ``case`` must have."""
    files = [volume_file(folder, case), properties_file(folder, case)]
    if labelled:
        files.append(label_file(folder, case))
    return files + [enface_file(folder, case, m) for m in enface]


# ----------------------------------------------------------------------------- the record (writer side)
def remove_completion_record(folder: Path) -> None:
    """Called by the writer before it touches any case: the folder is incomplete from now on."""
    (Path(folder) / RECORD_FILE).unlink(missing_ok=True)


def write_completion_record(folder: Path, cases: list[str] | None = None) -> dict[str, Any]:
    """Write the record for ``cases`` (default: every ``CASE.json`` in ``folder``), reading each
    case's ``labelled``/``enface`` from its properties; call it after the last case is written."""
    folder = Path(folder)
    if cases is None:
        cases = sorted(p.stem for p in folder.glob("*.json") if p.name != RECORD_FILE and not p.name.startswith("."))
    entries: dict[str, dict[str, Any]] = {}
    for case in sorted(cases):
        props = load_json(properties_file(folder, case))
        entries[case] = {"labelled": bool(props.get("labelled", label_file(folder, case).is_file())),
                         "enface": sorted(props.get("enface", []))}
    record = {"version": RECORD_VERSION, "data_identifier": folder.name,
              "written": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": entries}
    save_json(record, folder / RECORD_FILE)
    return record


# ----------------------------------------------------------------------------- the reader
@dataclass(frozen=True)
class PreprocessedFolder:
    """A complete preprocessed ``<data_identifier>`` folder and its cases."""

    folder: Path
    cases: dict[str, dict[str, Any]]
    """``{case: {"labelled": bool, "enface": [modality, ...]}}`` from the completion record."""

    @property
    def case_names(self) -> list[str]:
        return sorted(self.cases)

    @property
    def labelled(self) -> list[str]:
        """Cases with a label map."""
        return [c for c in self.case_names if self.cases[c]["labelled"]]

    def with_enface(self, modality: str) -> list[str]:
        """Cases that have the en-face image ``modality``."""
        return [c for c in self.case_names if modality in self.cases[c]["enface"]]


def _rerun(hint: str | None) -> str:
    return hint or "rerun fpn_plan_and_preprocess for this dataset"


def open_preprocessed(folder: str | Path, hint: str | None = None) -> PreprocessedFolder:
    """Check ``folder`` is complete and return its cases; :class:`FPNError` otherwise.

    ``hint``: what to run (e.g. ``run fpn_plan_and_preprocess -d 900``), appended to every message.
    """
    folder = Path(folder)
    record_path = folder / RECORD_FILE
    if not folder.is_dir():
        raise FPNError(f"{folder}: no preprocessed data here: {_rerun(hint)}")
    if not record_path.is_file():
        raise FPNError(f"{folder}: preprocessing did not finish (no {RECORD_FILE}; it is written last): "
                       f"{_rerun(hint)}")
    try:
        record = load_json(record_path)
        cases = record["cases"]
        if not isinstance(cases, dict) or not all(isinstance(v, dict) for v in cases.values()):
            raise TypeError("'cases' must map case names to objects")
        cases = {str(c): {"labelled": bool(v.get("labelled")), "enface": [str(m) for m in v.get("enface", [])]}
                 for c, v in cases.items()}
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise FPNError(f"{record_path}: unreadable completion record ({exc}): {_rerun(hint)}") from None
    if not cases:
        raise FPNError(f"{record_path}: the completion record lists no case: {_rerun(hint)}")
    missing = [p for c, v in sorted(cases.items()) for p in case_files(folder, c, v["labelled"], v["enface"])
               if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else ""
        raise FPNError(f"{missing[0]}: missing{more} from the preprocessed folder (incomplete or changed since "
                       f"preprocessing): {_rerun(hint)}")
    return PreprocessedFolder(folder, cases)
