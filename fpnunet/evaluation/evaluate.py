"""Evaluate folders of en-face predictions against references: ``summary.json`` and a per-case CSV.

:func:`evaluate_folders` pairs files by case name (the file name without its ending, so a
``CASE.png`` prediction pairs with a ``CASE.nii.gz`` reference), computes
:func:`fpnunet.evaluation.metrics.case_metrics` per case and writes

* ``summary.json`` shaped like nnU-Net's: ``metric_per_case`` (``reference_file``,
  ``prediction_file``, ``metrics`` keyed by label value as a string), ``mean`` per class and
  ``foreground_mean`` (the mean over classes of the class means), plus our extras: ``labels``,
  ``num_cases``, ``nan_count``, ``ignored_predictions``, the folders. NaN is written as ``null``.
* ``summary_per_case.csv`` beside it (``<stem>_per_case.csv`` for another output name): one row
  per case and foreground class.

The spacing (mm, numpy order ``(sB, sA)``) always comes from the reference file.

Cross-validation summaries (:func:`evaluate_crossval`) are :mod:`fpnunet.evaluation.crossval`.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fpnunet.atomic import save_json, write_atomic
from fpnunet.errors import FPNError
from fpnunet.evaluation.metrics import METRIC_KEYS, case_metrics
from fpnunet.io import SUPPORTED_ENDINGS, read_image, squeeze_2d, strip_ending
from fpnunet.io import file_ending as ending_of
from fpnunet.plans.verify_content import check_nifti

CSV_COLUMNS = (
    "case", "class", "label", "dice", "iou", "hd95_mm", "ref_area_mm2", "pred_area_mm2", "area_abs_error_mm2",
    "tp", "fp", "fn", "tn",
)
_CSV_FROM_METRIC = {
    "dice": "Dice", "iou": "IoU", "hd95_mm": "HD95", "ref_area_mm2": "ref_area_mm2",
    "pred_area_mm2": "pred_area_mm2", "area_abs_error_mm2": "area_abs_error_mm2",
    "tp": "TP", "fp": "FP", "fn": "FN", "tn": "TN",
}


# ----------------------------------------------------------------------------- files
def list_label_files(folder: str | os.PathLike, file_ending: str | None = None) -> dict[str, list[Path]]:
    """Image files of ``folder`` grouped by case name (hidden files and non-images skipped).

    With ``file_ending`` only files with that ending count. A case may map to several files
    (``CASE.png`` and ``CASE.nii.gz``); callers decide.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FPNError(f"{folder}: folder not found")
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        end = ending_of(p)
        if file_ending is not None:
            if not p.name.lower().endswith(file_ending.lower()):
                continue
        elif end not in SUPPORTED_ENDINGS:
            continue
        out.setdefault(strip_ending(p.name), []).append(p)
    return out


def pick_file(files: list[Path], preferred: Sequence[str], what: str) -> Path:
    """The one file of a case, else the only one with the first ``preferred`` ending that picks one;
    :class:`FPNError` naming ``what`` when none does."""
    if len(files) == 1:
        return files[0]
    for end in preferred:
        hits = [f for f in files if f.name.lower().endswith(end.lower())]
        if len(hits) == 1:
            return hits[0]
    raise FPNError(f"{what}: several files for one case, cannot choose: {', '.join(str(f) for f in files)}")


def pair_files(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    file_ending: str | None = None,
    cases: Iterable[str] | None = None,
) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """Pair reference and prediction files by case name.

    Returns ``([(case, ref_file, pred_file), ...], ignored_prediction_files)``. ``file_ending``
    restricts the reference files; predictions may have any supported ending (the reference's
    ending wins when a case has several). ``cases`` restricts the references evaluated.

    Raises :class:`FPNError` when the reference folder holds no labels or when predictions are
    missing for reference cases (naming them).
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    refs = list_label_files(ref_dir, file_ending)
    preds = list_label_files(pred_dir)
    if cases is not None:
        wanted = set(cases)
        unknown = sorted(wanted - set(refs))
        if unknown:
            raise FPNError(f"{ref_dir}: no reference for case(s) {', '.join(unknown)}")
        refs = {c: f for c, f in refs.items() if c in wanted}
    if not refs:
        ending = f" ending in {file_ending}" if file_ending else ""
        raise FPNError(f"{ref_dir}: no reference label files{ending} found")
    missing = sorted(c for c in refs if c not in preds)
    if missing:
        shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise FPNError(f"{pred_dir}: no prediction for reference case(s) {shown}")
    pairs = []
    for case in sorted(refs):
        ref = pick_file(refs[case], [file_ending or ""], f"{ref_dir} case {case}")
        pred = pick_file(preds[case], [ending_of(ref)] + ([file_ending] if file_ending else []),
                     f"{pred_dir} case {case}")
        pairs.append((case, ref, pred))
    ignored = [f for c in sorted(preds) if c not in refs for f in preds[c]]
    return pairs, ignored


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read an en-face label map: ``(int64 array (B, A), spacing (sB, sA))``.

    Singleton axes (``(1, B, A)`` exports) are dropped along with their spacing. Raises
    :class:`FPNError` naming the file when it is not 2D or holds non-integer values.
    """
    why, nonfinite = check_nifti(path)  # SimpleITK reads NaN voxels as 0: checked before reading
    if why:
        raise FPNError(f"{path}: {why}")
    if nonfinite:
        raise FPNError(f"{path}: a label map must hold integer class values, found {nonfinite} NaN/Inf value(s)")
    img = read_image(path)
    arr, spacing = img.array, tuple(img.spacing)
    if arr.ndim > 2:
        squeezed = squeeze_2d(arr)
        if squeezed.ndim == 2:
            spacing = tuple(s for s, n in zip(spacing, arr.shape) if n != 1)
            if len(spacing) != 2:  # (1, 1, A) and the like: keep the last two
                spacing = tuple(img.spacing[-2:])
            arr = squeezed
    if arr.ndim != 2:
        raise FPNError(f"{path}: expected a 2D en-face label map, got an array of shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise FPNError(f"{path}: a label map must hold integer class values, found NaN/Inf")
        if not np.all(arr == np.round(arr)):
            raise FPNError(f"{path}: a label map must hold integer class values, found non-integer values")
    elif arr.dtype.kind not in "iub":
        raise FPNError(f"{path}: a label map must hold integer class values, got dtype {arr.dtype}")
    return arr.astype(np.int64), spacing


# ----------------------------------------------------------------------------- workers
def check_label_values(arr: np.ndarray, path: str | os.PathLike, labels: Mapping[str, int]) -> None:
    """:class:`FPNError` naming ``path`` and the value when ``arr`` holds a value that is not a label."""
    allowed = {int(v) for v in labels.values()}
    bad = sorted({int(v) for v in np.unique(arr)} - allowed)
    if bad:
        names = ", ".join(f"{n}={v}" for n, v in labels.items())
        raise FPNError(f"{path}: label value {bad[0]} is not one of the dataset's labels ({names})"
                       + (f"; {len(bad) - 1} more unknown value(s)" if len(bad) > 1 else ""))


def _values_present(path: Path) -> set[int]:
    arr, _ = read_label_map(path)
    return {int(v) for v in np.unique(arr)}


def _evaluate_case(args: tuple[str, Path, Path, dict[str, int]]) -> dict[str, Any]:
    case, ref_path, pred_path, labels = args
    ref, spacing = read_label_map(ref_path)
    pred, _ = read_label_map(pred_path)
    check_label_values(ref, ref_path, labels)
    check_label_values(pred, pred_path, labels)
    if ref.shape != pred.shape:
        raise FPNError(
            f"shape mismatch for case {case}: reference {ref_path} is {ref.shape} (B, A) but "
            f"prediction {pred_path} is {pred.shape}"
        )
    return {
        "case": case,
        "reference_file": str(Path(ref_path).absolute()),
        "prediction_file": str(Path(pred_path).absolute()),
        "spacing": list(spacing),
        "metrics": case_metrics(ref, pred, spacing, labels),
    }


def _map(func, items: list, num_processes: int) -> list:
    if num_processes <= 1 or len(items) <= 1:
        return [func(it) for it in items]
    ctx = multiprocessing.get_context("spawn")  # safe beside torch/ITK threads in the parent
    with ProcessPoolExecutor(max_workers=min(num_processes, len(items)), mp_context=ctx) as ex:
        return list(ex.map(func, items, chunksize=max(1, len(items) // (4 * num_processes))))


# ----------------------------------------------------------------------------- summary
def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    finite = arr[~np.isnan(arr)]
    return float(finite.mean()) if finite.size else float("nan")


def summarize(entries: list[dict[str, Any]], labels: Mapping[str, int]) -> dict[str, Any]:
    """nnU-Net-style summary of per-case entries (each with ``metrics`` keyed by label value).

    ``mean[k][m]`` ignores NaN; ``nan_count[k]`` says how many NaN each mean skipped (HD95 is
    always listed). ``foreground_mean[m]`` is the NaN-ignoring mean over classes of ``mean[k][m]``.
    """
    classes = [str(v) for v in sorted({int(v) for v in labels.values() if int(v) != 0})]
    mean: dict[str, dict[str, float]] = {}
    nan_count: dict[str, dict[str, int]] = {}
    for k in classes:
        mean[k], nan_count[k] = {}, {}
        for m in METRIC_KEYS:
            vals = [float(e["metrics"][k][m]) for e in entries]
            mean[k][m] = _nanmean(vals)
            n_nan = int(sum(math.isnan(v) for v in vals))
            if n_nan or m == "HD95":
                nan_count[k][m] = n_nan
    foreground_mean = {m: _nanmean([mean[k][m] for k in classes]) for m in METRIC_KEYS}
    return {
        "metric_per_case": entries,
        "mean": mean,
        "foreground_mean": foreground_mean,
        "labels": {str(n): int(v) for n, v in labels.items()},
        "num_cases": len(entries),
        "nan_count": nan_count,
    }


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def per_case_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per case and foreground class with the :data:`CSV_COLUMNS`."""
    names = {str(v): n for n, v in summary["labels"].items()}
    rows = []
    for e in summary["metric_per_case"]:
        case = e.get("case") or strip_ending(Path(e["reference_file"]).name)
        for k, met in e["metrics"].items():
            row: dict[str, Any] = {"case": case, "class": names.get(k, k), "label": int(k)}
            row.update({col: met[key] for col, key in _CSV_FROM_METRIC.items()})
            rows.append(row)
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def csv_path_for(output_file: str | os.PathLike) -> Path:
    """``summary.json`` -> ``summary_per_case.csv`` (``X.json`` -> ``X_per_case.csv``)."""
    out = Path(output_file)
    return out.with_name(f"{out.stem}_per_case.csv")


def write_summary(summary: Mapping[str, Any], output_file: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``summary.json`` (NaN as null) and the per-case CSV beside it, both atomically."""
    out = Path(output_file)
    save_json(_nan_to_none(dict(summary)), out)
    csv = csv_path_for(out)
    table = per_case_table(summary)
    write_atomic(csv, lambda tmp: table.to_csv(tmp, index=False), suffix=".csv")
    return out, csv


# ----------------------------------------------------------------------------- folders
def evaluate_folders(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    labels: Mapping[str, int] | None = None,
    file_ending: str | None = None,
    num_processes: int = 1,
    output_file: str | os.PathLike | None = None,
    cases: Iterable[str] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate every reference case of ``ref_dir`` against its prediction in ``pred_dir``.

    Args:
        ref_dir, pred_dir: folders of 2D label maps ``(B, A)``, any SimpleITK format each.
        labels: ``{"background": 0, "GA": 1}``; ``None`` infers the union of the values present
            in references and predictions (named by their value).
        file_ending: only reference files with this ending (e.g. the dataset's ``.nii.gz``).
        num_processes: worker processes (1 evaluates in this process).
        output_file: where ``summary.json`` goes (default ``pred_dir/summary.json``); the
            per-case CSV goes beside it.
        cases: evaluate only these reference cases.
        write: write ``summary.json`` and the CSV (``False``: only return the summary).

    Returns:
        The summary dict (NaN kept as float NaN here; written as null).

    Raises:
        FPNError: a prediction missing for a reference case (naming it), a shape mismatch
            (naming both files), unreadable or non-label files.
    """
    pairs, ignored = pair_files(ref_dir, pred_dir, file_ending, cases)
    if ignored:
        warnings.warn(
            f"{pred_dir}: {len(ignored)} prediction(s) without a reference ignored: "
            + ", ".join(p.name for p in ignored[:10]) + (" ..." if len(ignored) > 10 else ""),
            UserWarning,
            stacklevel=2,
        )
    if labels is None:
        files = [r for _, r, _ in pairs] + [p for _, _, p in pairs]
        present = set().union(*_map(_values_present, files, num_processes))
        values = sorted(v for v in present if v > 0)  # a negative value is then refused per case
        labels = {"background": 0} | {str(v): v for v in values}
    labels = {str(k): int(v) for k, v in labels.items()}
    entries = _map(_evaluate_case, [(c, r, p, labels) for c, r, p in pairs], num_processes)
    summary = summarize(entries, labels)
    summary["reference_folder"] = str(Path(ref_dir).absolute())
    summary["prediction_folder"] = str(Path(pred_dir).absolute())
    summary["ignored_predictions"] = [str(p) for p in ignored]
    out = Path(output_file) if output_file is not None else Path(pred_dir) / "summary.json"
    summary["summary_file"] = str(out.absolute())
    summary["per_case_csv"] = str(csv_path_for(out).absolute())
    if write:
        write_summary(summary, out)
    return summary
