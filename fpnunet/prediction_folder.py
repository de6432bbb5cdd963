"""The owner of a prediction folder (``fpn_predict -o OUT``, a fold's ``validation/``)::

    OUT/
      CASE<ending>                     label map on the volume's en-face grid
      CASE.npz                         --save-probabilities: probabilities (K, B, A), label_values
      lesion_areas.csv                 one row per case and class (lesion_areas.part-I-of-K.csv per part)
      failed_cases.csv                 case,error of the inputs that could not be predicted (only when some failed)
      cases.part-I-of-K.json           a part's case list: every input case and the part's own (until merged)
      .fpn_predict_lock[.part-I-of-K]  while a fpn_predict (part) writes here: one writer per folder (or part)
      uncertainty/CASE.npz             share of the ensemble's members calling a lesion per pixel (uint8 0..255)

and the one rule by which a label map (a prediction or a reference) is read
(:func:`read_label_map`, :func:`check_label_values`): a 2D integer map, no NaN/Inf, every value one
of the dataset's labels; anything else is refused with one line naming the file. ``fpn_evaluate``,
``fpn_report``, the overlays and the training's validation read through it.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet.atomic import load_json, save_json, write_atomic
from fpnunet.errors import FPNError
from fpnunet.results_layout import FoldLock

if TYPE_CHECKING:  # numpy and fpnunet.io (SimpleITK) are imported where files are listed or read, so
    import numpy as np  # that fpn_predict and fpn_report stay light until they run (their --help)

AREAS_FILE = "lesion_areas.csv"
FAILED_FILE = "failed_cases.csv"
FAILED_COLUMNS = ("case", "error")
CONFIGURATION_COLUMN = "configuration"
"""The column of ``lesion_areas.csv`` naming the candidate(s) that made a mask (``fpn_predict --best``)."""
WRITER_LOCK = ".fpn_predict_lock"
_LOCK_PART_RE = re.compile(r"^\.fpn_predict_lock(\.part-(?P<i>\d+)-of-(?P<k>\d+))?$")
UNCERTAINTY_DIR = "uncertainty"
UNCERTAINTY_COLUMNS = ("qc", "qc_by", "qc_score", "area_low_mm2", "area_high_mm2", "disagreement", "entropy",
                       "near_miss", "fold_disagreement")
"""The per-case uncertainty columns ``fpn_predict`` appends to ``lesion_areas.csv``
(:mod:`fpnunet.inference.ensemble_scores`); ``qc_by`` names the score the flag read."""
_PART_RE = re.compile(r"^(?P<table>lesion_areas|failed_cases)\.part-(?P<i>\d+)-of-(?P<k>\d+)\.csv$")


class LabelMapError(FPNError):
    """A label map breaking the reading rule (not 2D, unreadable, NaN/Inf, non-integer or unknown
    values): every command refuses it instead of counting the case as failed."""


def part_name(table: str, part_id: int, num_parts: int) -> str:
    """``table`` (``lesion_areas.csv`` / ``failed_cases.csv``) of part ``part_id`` of ``num_parts``
    (the table itself for a single run)."""
    if num_parts == 1:
        return table
    return f"{table.removesuffix('.csv')}.part-{part_id}-of-{num_parts}.csv"


@dataclass(frozen=True)
class PredictionFolder:
    """File names and tables of one prediction folder."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    # ------------------------------------------------------------------ names
    def mask_file(self, case: str, ending: str) -> Path:
        """``CASE<ending>``: the predicted label map."""
        return self.folder / (case + ending)

    def probabilities_file(self, case: str) -> Path:
        """``CASE.npz``: the probabilities (``--save-probabilities``)."""
        return self.folder / f"{case}.npz"

    def vote_map_file(self, case: str) -> Path:
        """``uncertainty/CASE.npz``: the members' votes for a lesion (``votes``, uint8, 255 = every member)."""
        return self.folder / UNCERTAINTY_DIR / f"{case}.npz"

    def write_vote_map(self, case: str, votes: np.ndarray) -> Path:
        """Write ``uncertainty/CASE.npz`` from a share in [0, 1] ``(B, A)``, atomically."""
        import numpy as np  # lazy: start-up time

        path = self.vote_map_file(case)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.round(np.clip(votes, 0, 1) * 255).astype(np.uint8)

        def _w(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, votes=data)

        write_atomic(path, _w, suffix=".npz")
        return path

    def read_vote_map(self, case: str) -> np.ndarray | None:
        """The members' vote share ``(B, A)`` float32 in [0, 1], or ``None`` when the case has none."""
        import numpy as np  # lazy: start-up time

        path = self.vote_map_file(case)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["votes"].astype(np.float32) / 255.0
        except (OSError, KeyError, ValueError) as exc:
            raise FPNError(f"{path}: unreadable vote map ({exc})") from None

    def read_qc(self) -> dict[str, dict[str, Any]]:
        """``{case: {"qc", "qc_by", "qc_score", class: (area_low_mm2, area_high_mm2), ...}}`` from the
        uncertainty columns of ``lesion_areas.csv`` (``{}`` when the table or its columns are absent;
        ``qc_by`` None in a table written before the column existed)."""
        path = self.areas_file()
        if not path.is_file():
            return {}
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FPNError(f"{path}: cannot read the lesion-area table ({exc})") from None
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            if not row.get("qc") or not row.get("case"):
                continue
            try:
                entry = out.setdefault(row["case"], {"qc": row["qc"], "qc_by": row.get("qc_by") or None,
                                                     "qc_score": float(row["qc_score"])})
                entry[row.get("class", "")] = (float(row["area_low_mm2"]), float(row["area_high_mm2"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise FPNError(f"{path}: bad uncertainty columns for case {row['case']!r} ({exc})") from None
        return out

    def read_configurations(self) -> dict[str, str]:
        """``{case: the candidate(s) that made its mask}`` from the ``configuration`` column of
        ``lesion_areas.csv`` (``{}`` when the table or the column is absent)."""
        path = self.areas_file()
        if not path.is_file():
            return {}
        try:
            with open(path, newline="") as f:
                return {row["case"]: row[CONFIGURATION_COLUMN] for row in csv.DictReader(f)
                        if row.get("case") and row.get(CONFIGURATION_COLUMN)}
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise FPNError(f"{path}: cannot read the lesion-area table ({exc})") from None

    def areas_file(self, part_id: int = 0, num_parts: int = 1) -> Path:
        return self.folder / part_name(AREAS_FILE, part_id, num_parts)

    def failed_file(self, part_id: int = 0, num_parts: int = 1) -> Path:
        return self.folder / part_name(FAILED_FILE, part_id, num_parts)

    def part_cases_file(self, part_id: int, num_parts: int) -> Path:
        """``cases.part-I-of-K.json``: the case list part ``I`` was given (merged parts are checked on it)."""
        return self.folder / f"cases.part-{part_id}-of-{num_parts}.json"

    def write_part_cases(self, inputs: Iterable[str], cases: Iterable[str], part_id: int, num_parts: int) -> None:
        """Record every input case (of all parts) and this part's own, before the part predicts."""
        save_json({"part_id": part_id, "num_parts": num_parts, "inputs": sorted(inputs), "cases": sorted(cases)},
                  self.part_cases_file(part_id, num_parts))

    def read_part_cases(self, part_id: int, num_parts: int) -> tuple[list[str], list[str]]:
        """``(inputs, cases)`` of :meth:`write_part_cases`; a missing or malformed list is an error."""
        path = self.part_cases_file(part_id, num_parts)
        rerun = f"rerun fpn_predict --num-parts {num_parts} --part-id {part_id}"
        if not path.is_file():
            raise FPNError(f"{path}: missing: part {part_id} of {num_parts} has no case list ({rerun})")
        try:
            d = load_json(path)
            inputs, cases = d["inputs"], d["cases"]
            if (d["part_id"], d["num_parts"]) != (part_id, num_parts) or not all(
                    isinstance(c, str) for c in [*inputs, *cases]):
                raise ValueError("not this part's list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FPNError(f"{path}: not a readable case list ({exc}); {rerun}") from None
        return list(inputs), list(cases)

    def writer_lock(self, part_id: int = 0, num_parts: int = 1) -> PredictionLock:
        """The lock one writer holds (not yet acquired): see :class:`PredictionLock`."""
        return PredictionLock(self.folder, part_id, num_parts)

    # ------------------------------------------------------------------ masks
    def masks(self) -> dict[str, Path]:
        """Label-map files by case (top level; a ``.png`` only when no other file has its name)."""
        from fpnunet.io import SUPPORTED_ENDINGS, file_ending, strip_ending  # lazy: start-up time (SimpleITK)

        if not self.folder.is_dir():
            raise FPNError(f"{self.folder}: folder not found")
        out: dict[str, Path] = {}
        for p in sorted(self.folder.iterdir()):
            if p.name.startswith(".") or not p.is_file() or file_ending(p) not in SUPPORTED_ENDINGS:
                continue
            case = strip_ending(p.name)
            if case not in out or file_ending(out[case]) == ".png":
                out[case] = p
        return out

    def remove_masks_except(self, cases: Iterable[str], ending: str) -> None:
        """Remove the ``*<ending>`` masks of cases not in ``cases`` (stale ones of an earlier run)."""
        keep = {self.mask_file(c, ending).name for c in cases}
        for stale in self.folder.glob(f"*{ending}"):
            if stale.name not in keep:
                stale.unlink()

    def probabilities(self) -> dict[str, Path]:
        """``CASE.npz`` probability files by case (top level)."""
        if not self.folder.is_dir():
            return {}
        return {p.name[:-4]: p for p in sorted(self.folder.glob("*.npz")) if not p.name.startswith(".")}

    def remove_probabilities_except(self, cases: Iterable[str]) -> None:
        """Remove the ``CASE.npz`` files of cases not in ``cases`` (stale ones of an earlier run)."""
        keep = set(cases)
        for case, path in self.probabilities().items():
            if case not in keep:
                path.unlink()

    def read_probabilities(self, case: str) -> np.ndarray:
        """The probabilities ``(K, B, A)`` float32 of ``CASE.npz``; one-line :class:`FPNError` naming
        the file when it is missing or not a probability array."""
        import numpy as np  # lazy: start-up time

        path = self.probabilities_file(case)
        try:
            with np.load(path, allow_pickle=False) as z:
                probs = np.asarray(z["probabilities"], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise FPNError(f"{path}: cannot read probabilities ({exc})") from None
        if probs.ndim != 3 or not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
            raise FPNError(f"{path}: expected finite probabilities in [0, 1] of shape (K, B, A), got shape "
                           f"{probs.shape}")
        return probs

    # ------------------------------------------------------------------ tables
    def write_areas(self, rows: list[dict[str, Any]], columns: Iterable[str], part_id: int = 0,
                    num_parts: int = 1) -> Path:
        """The lesion-area table (of one part), atomically."""
        import pandas as pd

        path = self.areas_file(part_id, num_parts)
        df = pd.DataFrame(rows, columns=list(columns))
        write_atomic(path, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
        return path

    def write_failed(self, failed: Mapping[str, str], part_id: int = 0, num_parts: int = 1) -> Path | None:
        """``failed_cases.csv`` (``case,error``, in case order) of the inputs that failed; without
        any, an earlier run's table is removed and ``None`` returned."""
        path = self.failed_file(part_id, num_parts)
        if not failed:
            path.unlink(missing_ok=True)
            return None

        def _w(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(FAILED_COLUMNS)
                w.writerows(sorted(failed.items()))

        write_atomic(path, _w, suffix=".csv")
        return path

    def read_failed(self) -> dict[str, str]:
        """``{case: error}`` of ``failed_cases.csv`` (``{}`` when absent)."""
        path = self.failed_file()
        return self.read_failed_table(path) if path.is_file() else {}

    @staticmethod
    def read_failed_table(path: Path) -> dict[str, str]:
        """``{case: error}`` of a failed-case table (header ``case,error``)."""
        try:
            with open(path, newline="") as f:
                return {row["case"]: row.get("error", "") for row in csv.DictReader(f) if row.get("case")}
        except (OSError, KeyError, UnicodeDecodeError) as exc:
            raise FPNError(f"{path}: cannot read the failed-case list ({exc})") from None

    def part_tables(self, table: str) -> dict[int, dict[int, Path]]:
        """``{num_parts: {part_id: path}}`` of the part tables of ``table`` (``lesion_areas.csv``, ...)."""
        stem = table.removesuffix(".csv")
        parts: dict[int, dict[int, Path]] = {}
        for p in self.folder.iterdir():
            m = _PART_RE.match(p.name)
            if m and m.group("table") == stem:
                parts.setdefault(int(m.group("k")), {})[int(m.group("i"))] = p
        return parts


class PredictionLock:
    """One writer per prediction folder: ``.fpn_predict_lock`` (a whole run, or ``--merge-parts``) or
    ``.fpn_predict_lock.part-I-of-K`` (a part). :meth:`acquire` creates the folder, takes the lock
    (that of a dead process is taken over) and refuses while any other live writer holds one,
    except the other parts of the same split, which write side by side."""

    def __init__(self, folder: Path, part_id: int = 0, num_parts: int = 1) -> None:
        self.folder, self.part = Path(folder), (part_id, num_parts)
        name = WRITER_LOCK if num_parts == 1 else f"{WRITER_LOCK}.part-{part_id}-of-{num_parts}"
        self.lock = FoldLock(self.folder, "fpn_predict", name)

    def acquire(self, inputs: list[str] | None = None, cases: list[str] | None = None) -> PredictionLock:
        """Take the lock; a part given ``inputs`` (every input case) and ``cases`` (its own) then
        records them (:meth:`PredictionFolder.write_part_cases`) for ``--merge-parts``."""
        self.lock.acquire()
        for p in sorted(self.folder.iterdir()):
            m = _LOCK_PART_RE.match(p.name)
            if not m or p == self.lock.path:
                continue
            other = (int(m.group("i") or 0), int(m.group("k") or 1))
            if other[1] == self.part[1] > 1:  # another part of the same split
                continue
            owner = FoldLock(self.folder, name=p.name).live_owner()
            if owner is not None:
                self.lock.release()
                raise FPNError(f"{self.folder} is being written by another fpn_predict (PID {owner.get('pid')}, "
                               f"started {owner.get('started', '?')}: {owner.get('command', '?')}); wait for it "
                               f"or use another -o folder")
        if inputs is not None and self.part[1] > 1:
            PredictionFolder(self.folder).write_part_cases(inputs, cases or [], *self.part)
        return self

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> PredictionLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------- the reading rule
def read_label_map(path: str | os.PathLike, labels: Mapping[str, int] | None = None
                   ) -> tuple[np.ndarray, tuple[float, float]]:
    """Read an en-face label map: ``(int64 array (B, A), spacing (sB, sA))``.

    Singleton axes (``(1, B, A)`` exports) are dropped along with their spacing. Raises
    :class:`LabelMapError` naming the file when it is unreadable, not 2D, holds NaN/Inf or
    non-integer values, or (with ``labels``) a value that is not one of the labels.
    """
    import numpy as np  # lazy: start-up time (SimpleITK)

    from fpnunet.io import check_nifti, read_image, squeeze_2d  # lazy: start-up time (SimpleITK)
    if not Path(path).is_file():
        raise LabelMapError(f"{path}: file not found")
    why, nonfinite = check_nifti(path)  # SimpleITK reads NaN voxels as 0 and zero-fills truncated files
    if why:
        raise LabelMapError(f"{path}: {why}")
    if nonfinite:
        raise LabelMapError(f"{path}: a label map must hold integer class values, found {nonfinite} NaN/Inf value(s)")
    try:
        img = read_image(path)
    except FPNError as exc:
        raise LabelMapError(str(exc)) from None
    arr, spacing = img.array, tuple(float(s) for s in img.spacing)
    if arr.ndim > 2:
        squeezed = squeeze_2d(arr)
        if squeezed.ndim == 2:
            spacing = tuple(s for s, n in zip(spacing, arr.shape) if n != 1)
            if len(spacing) != 2:  # (1, 1, A) and the like: keep the last two
                spacing = tuple(float(s) for s in img.spacing[-2:])
            arr = squeezed
    if arr.ndim != 2:
        raise LabelMapError(f"{path}: expected a 2D en-face label map, got an array of shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise LabelMapError(f"{path}: a label map must hold integer class values, found NaN/Inf")
        if not np.all(arr == np.round(arr)):
            raise LabelMapError(f"{path}: a label map must hold integer class values, found non-integer values")
    elif arr.dtype.kind not in "iub":
        raise LabelMapError(f"{path}: a label map must hold integer class values, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if labels is not None:
        check_label_values(out, path, labels)
    return out, (spacing[0], spacing[1])


def check_label_values(arr: np.ndarray, path: str | os.PathLike, labels: Mapping[str, int]) -> None:
    """:class:`LabelMapError` naming ``path`` and the value when ``arr`` holds a value that is not a label."""
    import numpy as np  # lazy: start-up time (SimpleITK)

    allowed = {int(v) for v in labels.values()}
    bad = sorted({int(v) for v in np.unique(arr)} - allowed)
    if bad:
        names = ", ".join(f"{n}={v}" for n, v in labels.items())
        raise LabelMapError(f"{path}: label value {bad[0]} is not one of the dataset's labels ({names})"
                            + (f"; {len(bad) - 1} more unknown value(s)" if len(bad) > 1 else ""))


def labels_present(files: Iterable[Path]) -> dict[str, int]:
    """``{"background": 0, "1": 1, ...}``: the positive values found in ``files`` (named by value),
    for folders read without a dataset.json (a negative value is then refused per file)."""
    import numpy as np  # lazy: start-up time (SimpleITK)

    values: set[int] = set()
    for f in files:
        values |= {int(v) for v in np.unique(read_label_map(f)[0])}
    return {"background": 0} | {str(v): v for v in sorted(values) if v > 0}
