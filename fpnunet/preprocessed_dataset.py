"""The owner of a preprocessed ``<data_identifier>`` folder (``$FPN_PREPROCESSED/DatasetXXX/<id>/``):
its writer (``fpn_plan_and_preprocess``) and every reader (training, pretraining, the splits) go
through :class:`PreprocessedDataset`. It knows the file names (docs/layout.md)::

    CASE.npy        float32 (C, B, depth, A)  normalised, depth-reduced volume
    CASE_seg.npy    uint8   (B, A)            label map (labelled cases only)
    CASE_<MOD>.npy  float32 (B, A)            en-face image scaled to [0, 1] (per modality present)
    CASE.json       properties; written last, so its presence marks a finished case
    preprocessing_complete.json   the completion record: deleted first, written after the last case

The record lists every case and what it has (``labelled``, ``enface``). A folder is usable only
when the record exists and every case it lists has all its files; otherwise
:meth:`PreprocessedDataset.open` refuses it with one message naming what is missing and telling to
rerun ``fpn_plan_and_preprocess`` (a killed preprocessing leaves no record: the writer deletes it
before touching any case and writes it after the last one). ``CASE.json`` is parsed here only
(:meth:`PreprocessedDataset.properties`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet.atomic import load_json, read_json_object, save_json, save_npy
from fpnunet.errors import FPNError

if TYPE_CHECKING:  # numpy and fpnunet.io (SimpleITK) are imported where arrays are read, so that a
    import numpy as np  # command importing this module stays light until it runs (its --help)

    from fpnunet.io import EnfaceGeometry

RECORD_FILE = "preprocessing_complete.json"
RECORD_VERSION = 1
LABEL_MODE = "seg"
"""The target ``mode`` of a label map (any other mode names an en-face modality)."""


PLANS_FILE = "plans.json"
"""The plan (:class:`fpnunet.plans.plan.Plan`, which reads and writes its content) in a dataset's
preprocessed folder, and its copy in every model folder."""


def plans_file(folder: str | os.PathLike) -> Path:
    """``folder/plans.json``: ``folder`` is a dataset's preprocessed folder or a model folder."""
    return Path(folder) / PLANS_FILE


def _rerun(hint: str | None) -> str:
    return hint or "rerun fpn_plan_and_preprocess for this dataset"


def npy_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``.npy`` array (``None`` when it is), from its header and its
    size alone: unreadable header, Python objects, or fewer bytes than the header's shape needs."""
    import numpy as np  # lazy: start-up time (SimpleITK)

    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:  # a newer header layout: let numpy map it
                np.load(path, mmap_mode="r")
                return None
            offset = f.tell()
    except (OSError, ValueError, EOFError) as exc:
        return f"not a readable .npy array ({exc})"
    if dtype.hasobject:
        return "holds Python objects, not numbers"
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        return f"truncated ({size} of {need} bytes)"
    return None


_FINITE_CHUNK = 1 << 22
"""Values per slice of the NaN/Inf scan (16 MiB of float32): one pass, bounded memory."""


_FOUND_FINITE: set[tuple[str, int, int]] = set()
"""Files this process has already scanned and found finite, by (path, size, modification time):
validation loads each validation volume every validation epoch, and a file that has not changed
since its scan is not scanned again."""


def check_finite(path: Path, array: np.ndarray | None = None) -> None:
    """Refuse a float ``.npy`` holding NaN or Inf (a preprocessing bug or a damaged file would
    otherwise train on NaN losses): one pass over ``array`` (or ``path`` memory-mapped), in slices.
    Integer arrays (label maps) are skipped; so is a file already found finite by this process and
    unchanged since (same size and modification time)."""
    import numpy as np  # lazy: start-up time (SimpleITK)

    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _FOUND_FINITE:
        return
    arr = np.load(path, mmap_mode="r") if array is None else array
    if arr.dtype.kind not in "fc":
        return
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        chunk = np.asarray(flat[start:start + _FINITE_CHUNK])
        if not np.isfinite(chunk).all():
            bad = int(np.count_nonzero(~np.isfinite(chunk)))
            raise FPNError(f"{path}: holds NaN or Inf values ({bad} or more of {flat.size}); "
                           f"rerun fpn_plan_and_preprocess for this dataset")
    _FOUND_FINITE.add(key)


@dataclass(frozen=True)
class PreprocessedDataset:
    """One preprocessed ``<data_identifier>`` folder. ``PreprocessedDataset(folder)`` names and
    writes its files; :meth:`open` checks it is complete and fills :attr:`cases`."""

    folder: Path
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``{case: {"labelled": bool, "enface": [modality, ...]}}`` from the completion record
    (empty unless made by :meth:`open`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    # ------------------------------------------------------------------ file names
    def volume_file(self, case: str) -> Path:
        return self.folder / f"{case}.npy"

    def properties_file(self, case: str) -> Path:
        return self.folder / f"{case}.json"

    def label_file(self, case: str) -> Path:
        return self.folder / f"{case}_seg.npy"

    def enface_file(self, case: str, modality: str) -> Path:
        return self.folder / f"{case}_{modality}.npy"

    def target_file(self, case: str, mode: str) -> Path:
        """The en-face target of ``case``: its label map (``mode == "seg"``) or en-face image ``mode``."""
        return self.label_file(case) if mode == LABEL_MODE else self.enface_file(case, mode)

    @property
    def record_file(self) -> Path:
        return self.folder / RECORD_FILE

    def case_files(self, case: str, labelled: bool, enface: list[str]) -> list[Path]:
        """Every file case ``case`` must have."""
        files = [self.volume_file(case), self.properties_file(case)]
        if labelled:
            files.append(self.label_file(case))
        return files + [self.enface_file(case, m) for m in enface]

    def labelled_files(self) -> list[Path]:
        """The label maps present (no completeness check: for summaries such as ``fpn_paths``)."""
        return sorted(self.folder.glob("*_seg.npy")) if self.folder.is_dir() else []

    # ------------------------------------------------------------------ writing
    def start_case(self, case: str) -> None:
        """Remove the properties of ``case``: unfinished until :meth:`write_case` writes them again."""
        self.properties_file(case).unlink(missing_ok=True)

    def write_case(self, case: str, volume: np.ndarray, label: np.ndarray | None, enface: Mapping[str, np.ndarray],
                   modalities: list[str], properties: dict[str, Any]) -> None:
        """Write a case's files atomically, the properties last: the volume, the label map (removed
        when ``None``), each of ``modalities`` present in ``enface`` (the others removed)."""
        try:
            save_npy(volume, self.volume_file(case))
            if label is not None:
                save_npy(label, self.label_file(case))
            else:
                self.label_file(case).unlink(missing_ok=True)
            for mod in modalities:
                if mod in enface:
                    save_npy(enface[mod], self.enface_file(case, mod))
                else:
                    self.enface_file(case, mod).unlink(missing_ok=True)
            save_json(properties, self.properties_file(case))
        except OSError as exc:
            raise FPNError(f"case {case}: cannot write to {self.folder} ({exc})") from None

    def is_done(self, case: str, signature: str) -> bool:
        """Whether ``case`` is finished ("up to date"): properties carrying ``signature`` and every
        file they list there and whole (:meth:`case_problem`)."""
        path = self.properties_file(case)
        if not path.is_file():
            return False
        try:
            props = load_json(path)
            if props.get("signature") != signature:
                return False
            enface = [str(m) for m in props.get("enface", [])]
            return self.case_problem(case, bool(props.get("labelled")), enface) is None
        except (ValueError, OSError, AttributeError, TypeError):
            return False

    def case_problem(self, case: str, labelled: bool, enface: list[str]) -> tuple[Path, str] | None:
        """``(file, what is wrong)`` for the first file of ``case`` that is missing, not whole (a
        ``.npy`` shorter than its header says, holding objects) or not valid JSON; ``None`` if all are."""
        for p in self.case_files(case, labelled, enface):
            if not p.is_file():
                return p, "missing"
            why = npy_problem(p) if p.suffix == ".npy" else None
            if p.suffix == ".json":
                try:
                    self.properties(case)
                except FPNError as exc:
                    why = str(exc).split(": ", 1)[-1]
            if why:
                return p, why
        return None

    def check_cases(self, cases: list[str], hint: str | None = None) -> None:
        """Every file of ``cases`` there and whole (:meth:`case_problem`), checked before a run
        deletes or writes anything; :class:`FPNError` naming the first bad file otherwise."""
        for case in cases:
            entry = self.cases.get(case, {"labelled": True, "enface": []})
            problem = self.case_problem(case, bool(entry["labelled"]), list(entry["enface"]))
            if problem:
                raise FPNError(f"{problem[0]}: {problem[1]}: {_rerun(hint)}")

    def tidy(self, cases: set[str], modalities: list[str]) -> None:
        """Remove temporary files of an interrupted run and the files of cases not in ``cases``."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if p.name.startswith(".") and p.is_file() and p.suffix in (".npy", ".json"):
                p.unlink(missing_ok=True)
            elif p.suffix == ".json" and p.is_file() and p.stem not in cases and p.name != RECORD_FILE:
                p.unlink(missing_ok=True)
                for q in [self.volume_file(p.stem), self.label_file(p.stem),
                          *(self.enface_file(p.stem, m) for m in modalities)]:
                    q.unlink(missing_ok=True)

    def remove_completion_record(self) -> None:
        """Called by the writer before it touches any case: the folder is incomplete from now on."""
        self.record_file.unlink(missing_ok=True)

    def write_completion_record(self, cases: list[str] | None = None) -> dict[str, Any]:
        """Write the record for ``cases`` (default: every ``CASE.json`` of the folder), reading each
        case's ``labelled``/``enface`` from its properties; call it after the last case is written."""
        if cases is None:
            cases = sorted(p.stem for p in self.folder.glob("*.json")
                           if p.name != RECORD_FILE and not p.name.startswith("."))
        entries: dict[str, dict[str, Any]] = {}
        for case in sorted(cases):
            props = self.properties(case)
            entries[case] = {"labelled": bool(props.get("labelled", self.label_file(case).is_file())),
                             "enface": sorted(props.get("enface", []))}
        record = {"version": RECORD_VERSION, "data_identifier": self.folder.name,
                  "written": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": entries}
        save_json(record, self.record_file)
        return record

    # ------------------------------------------------------------------ the complete folder
    @classmethod
    def open(cls, folder: str | os.PathLike, hint: str | None = None) -> PreprocessedDataset:
        """Check ``folder`` is complete and return it with its cases; :class:`FPNError` otherwise.

        ``hint``: what to run (e.g. ``run fpn_plan_and_preprocess -d 900``), appended to every message.
        """
        ds = cls(Path(folder))
        record_path = ds.record_file
        if not ds.folder.is_dir():
            raise FPNError(f"{ds.folder}: no preprocessed data here: {_rerun(hint)}")
        if not record_path.is_file():
            raise FPNError(f"{ds.folder}: preprocessing did not finish (no {RECORD_FILE}; it is written last): "
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
        missing = [p for c, v in sorted(cases.items()) for p in ds.case_files(c, v["labelled"], v["enface"])
                   if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else ""
            raise FPNError(f"{missing[0]}: missing{more} from the preprocessed folder (incomplete or changed "
                           f"since preprocessing): {_rerun(hint)}")
        return cls(ds.folder, cases)

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

    # ------------------------------------------------------------------ reading a case
    def properties(self, case: str) -> dict[str, Any]:
        """The parsed ``CASE.json``; missing or invalid is an :class:`FPNError` naming the file."""
        return read_json_object(self.properties_file(case), "properties missing (re-run fpn_plan_and_preprocess)")

    def geometry(self, case: str) -> EnfaceGeometry:
        """The en-face grid of the raw case (``geometry`` of its properties)."""
        from fpnunet.io import EnfaceGeometry  # lazy: start-up time (SimpleITK)

        try:
            return EnfaceGeometry.from_dict(self.properties(case)["geometry"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FPNError(f"{self.properties_file(case)}: no usable 'geometry' ({exc}); "
                           "re-run fpn_plan_and_preprocess") from None

    def class_locations(self, case: str) -> dict[int, np.ndarray] | None:
        """``class -> (K, 2)`` int64 ``(b, a)`` foreground pixels from the properties (classes
        without any left out); ``None`` when the properties file or its ``class_locations`` is absent."""
        if not self.properties_file(case).is_file():
            return None
        import numpy as np  # lazy: start-up time (SimpleITK)

        locs = self.properties(case).get("class_locations")
        if not isinstance(locs, dict):
            return None
        out: dict[int, np.ndarray] = {}
        for k, v in locs.items():
            arr = np.asarray(v, dtype=np.int64).reshape(-1, 2) if len(v) else np.zeros((0, 2), np.int64)
            if len(arr):
                out[int(k)] = arr
        return out

    def load_volume(self, case: str, mmap: bool = False) -> np.ndarray:
        """The preprocessed volume ``(C, B, depth, A)`` float32 (``mmap``: memory-mapped, read-only)."""
        import numpy as np  # lazy: start-up time (SimpleITK)

        path = self.volume_file(case)
        if not path.is_file():
            raise FPNError(f"{path}: preprocessed volume missing (re-run fpn_plan_and_preprocess)")
        volume = np.load(path, mmap_mode="r") if mmap else np.load(path)
        check_finite(path, volume)
        return volume

    def load_label(self, case: str) -> np.ndarray:
        """The preprocessed label map ``(B, A)``."""
        import numpy as np  # lazy: start-up time (SimpleITK)

        path = self.label_file(case)
        if not path.is_file():
            raise FPNError(f"{path}: label map missing: case {case} is not labelled")
        return np.load(path)

    def load_enface(self, case: str, modality: str, missing: str | None = None) -> np.ndarray:
        """The en-face image ``modality`` of ``case`` ``(B, A)``; ``missing``: the message when absent."""
        import numpy as np  # lazy: start-up time (SimpleITK)

        path = self.enface_file(case, modality)
        if not path.is_file():
            raise FPNError(missing or f"{path}: {modality} image of case {case!r} not found (re-run preprocessing)")
        image = np.load(path)
        check_finite(path, image)
        return image
