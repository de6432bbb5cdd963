"""Dataset fingerprint (``dataset_fingerprint.json``): per-case statistics and their summary.

:func:`verify_and_fingerprint` verifies every case of a raw dataset before any work is done
(:mod:`fpnunet.plans.verify`: structure, headers, content) and raises one
:class:`~fpnunet.errors.DatasetError` listing every problem (one line each, naming the file or
case), or returns the fingerprint the planner reads. The content step and the statistics share
one read of each case, one case per task in a process pool.

Geometry: a raw volume is read in numpy order and its projection (depth) axis moved to 1, so
shapes and spacings in the fingerprint are ``(B, D, A)``; the en-face plane is ``(B, A)``.

Fingerprint keys (the planner reads them)::

    dataset_name, projection_axis, num_channels, labels, enface_modalities, file_ending,
    num_cases, num_labelled, num_unlabelled, num_test,
    cases: {CASE: {shape, spacing, retina_band, labelled, enface, label_classes,
                   foreground_fraction, intensity: {p00_5, p99_5, mean, std}}},
    median_shape, median_spacing, retina_band_height_p95, retina_band_height_max,
    intensity: {p00_5, p99_5, mean, std}, foreground_fraction_mean

Per-case and dataset intensities are those of channel 0 (the OCT) inside the retina band.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpnunet.choice_caveats import BLIND_SPOT, LABEL_LESION_FREE
from fpnunet.parallel import parallel_map
from fpnunet.plans.verify import check_files
from fpnunet.plans.verify_content import check_case_content
from fpnunet.raw_dataset import CaseFiles, DatasetInfo
from fpnunet.retina import detect_retina_band
from fpnunet.seeds import case_seed

# re-exported: these lived here before verification and parallel_map got their own modules
__all__ = [
    "SAMPLES_PER_CASE",
    "case_statistics",
    "fingerprint_summary",
    "verify_and_fingerprint",
]

SAMPLES_PER_CASE = 10_000
"""Retina voxels sampled per case for the dataset-level intensity statistics."""


# ----------------------------------------------------------------------------- per case (workers)
def case_statistics(
    case: str,
    volume: np.ndarray,
    spacing_bda: Sequence[float],
    label: np.ndarray | None,
    enface: Sequence[str],
    samples: int = SAMPLES_PER_CASE,
) -> tuple[dict[str, Any], np.ndarray]:
    """The fingerprint entry of one verified case and ``samples`` retina voxels (float32) of it.

    ``volume`` is channel 0 ``(B, D, A)``, ``label`` its ``(B, A)`` label map or ``None``,
    ``enface`` the modalities present. The voxels are drawn with a per-case seed.
    """
    b, d, a = volume.shape
    top, bottom = detect_retina_band(volume)
    band = volume[:, top:bottom]
    p_lo, p_hi = np.percentile(band, [0.5, 99.5])
    rng = np.random.default_rng(case_seed(case))
    n = int(samples)
    sample = band[rng.integers(0, b, n), rng.integers(0, bottom - top, n), rng.integers(0, a, n)].astype(np.float32)
    stats: dict[str, Any] = {
        "shape": [int(b), int(d), int(a)],
        "spacing": [float(s) for s in spacing_bda],
        "retina_band": [int(top), int(bottom)],
        "labelled": label is not None,
        "enface": sorted(enface),
        "label_classes": sorted(int(v) for v in np.unique(label)) if label is not None else [],
        "foreground_fraction": float(np.count_nonzero(label) / label.size) if label is not None else None,
        "intensity": {
            "p00_5": float(p_lo),
            "p99_5": float(p_hi),
            "mean": float(band.mean(dtype=np.float64)),
            "std": float(band.std(dtype=np.float64)),
        },
    }
    return stats, sample


@dataclass
class _CaseTask:
    files: CaseFiles
    axis: int | None
    label_values: tuple[int, ...]
    raw: Path
    samples: int = SAMPLES_PER_CASE


@dataclass
class _CaseResult:
    case: str
    problems: list[str]
    stats: dict[str, Any] | None = None
    sample: np.ndarray | None = None


def _inspect_case(task: _CaseTask) -> _CaseResult:
    """Read one case's files, check their content and compute its statistics (runs in a worker)."""
    content = check_case_content(task.files, task.axis, task.label_values, task.raw)
    if content.volume is None:
        return _CaseResult(content.case, content.problems)
    stats, sample = case_statistics(
        content.case, content.volume, content.spacing_bda, content.label, list(task.files.enface), task.samples
    )
    return _CaseResult(content.case, content.problems, stats, sample)


# ----------------------------------------------------------------------------- entry point
def verify_and_fingerprint(
    raw_folder: str | os.PathLike, num_processes: int = 1, show_progress: bool = True
) -> dict[str, Any]:
    """Verify every case of the raw dataset in ``raw_folder`` and return its fingerprint.

    Raises :class:`DatasetError` with one line per problem (naming the file or case) when
    anything is wrong; nothing is written either way.
    """
    fc = check_files(raw_folder)
    rep, checks, axis = fc.report, fc.checks, fc.axis
    per_case = max(1000, min(SAMPLES_PER_CASE, 2_000_000 // max(1, len(checks))))
    tasks = [
        _CaseTask(c.files, None if c.axis_conflict else axis, tuple(sorted(fc.info.labels.values())), fc.raw, per_case)
        for c in checks
        if c.ok
    ]
    results: dict[str, _CaseResult] = {}
    for res in parallel_map(_inspect_case, tasks, num_processes, show_progress, desc="verify"):
        results[res.case] = res
    for c in checks:
        if c.files.case in results:
            rep.problems.extend(results[c.files.case].problems)
    rep.raise_if_any()
    assert axis is not None
    ordered = [results[c.files.case] for c in checks]
    return _fingerprint(fc.info, fc.raw, axis, ordered, num_test=fc.num_test)




def _fingerprint(
    info: DatasetInfo, raw: Path, axis: int, results: list[_CaseResult], num_test: int
) -> dict[str, Any]:
    cases = {r.case: r.stats for r in results}
    stats = [r.stats for r in results if r.stats is not None]
    shapes = np.array([s["shape"] for s in stats], dtype=np.float64)
    spacings = np.array([s["spacing"] for s in stats], dtype=np.float64)
    heights = np.array([s["retina_band"][1] - s["retina_band"][0] for s in stats], dtype=np.float64)
    sample = np.concatenate([r.sample for r in results if r.sample is not None])
    fg = [s["foreground_fraction"] for s in stats if s["labelled"]]
    n_lab = sum(1 for s in stats if s["labelled"])
    p_lo, p_hi = np.percentile(sample, [0.5, 99.5])
    return {
        "dataset_name": raw.name,
        "projection_axis": int(axis),
        "num_channels": info.num_channels,
        "labels": dict(info.labels),
        "enface_modalities": list(info.enface_modalities),
        "file_ending": info.file_ending,
        "num_cases": len(stats),
        "num_labelled": n_lab,
        "num_unlabelled": len(stats) - n_lab,
        "num_test": int(num_test),
        "cases": cases,
        "median_shape": [int(round(v)) for v in np.median(shapes, axis=0)],
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "retina_band_height_p95": int(math.ceil(float(np.percentile(heights, 95)))),
        "retina_band_height_max": int(heights.max()),
        "intensity": {
            "p00_5": float(p_lo),
            "p99_5": float(p_hi),
            "mean": float(sample.mean(dtype=np.float64)),
            "std": float(sample.std(dtype=np.float64)),
        },
        "foreground_fraction_mean": float(np.mean(fg)) if fg else 0.0,
    }


def fingerprint_summary(fp: dict[str, Any]) -> str:
    """A few human-readable lines about a fingerprint (printed by ``--verify-only``)."""
    b, d, a = fp["median_shape"]
    sb, sd, sa = fp["median_spacing"]
    lines = [
        f"{fp['dataset_name']}: {fp['num_cases']} training cases ({fp['num_labelled']} labelled, "
        f"{fp['num_unlabelled']} unlabelled), {fp['num_test']} test cases",
        f"  projection (depth) axis of the raw volumes: {fp['projection_axis']}; channels: {fp['num_channels']}",
        f"  median shape (B, D, A): {b} x {d} x {a}; median spacing: {sb:g} x {sd:g} x {sa:g}",
        f"  retina band height: p95 {fp['retina_band_height_p95']} rows, max {fp['retina_band_height_max']} rows",
        f"  labels: {fp['labels']}; mean foreground fraction {fp['foreground_fraction_mean']:.3f}",
    ]
    if fp["num_labelled"]:
        free = sum(1 for c in fp["cases"].values() if c and c["labelled"] and c["foreground_fraction"] == 0)
        none = f" (none: in fpn_find_best_configuration {BLIND_SPOT}; {LABEL_LESION_FREE})" if free == 0 else ""
        lines.append(f"  lesion-free labelled cases: {free} of {fp['num_labelled']}{none}")
    if fp["enface_modalities"]:
        counts = Counter(m for c in fp["cases"].values() for m in c["enface"])
        lines.append("  en-face images: " + ", ".join(f"{m} {counts.get(m, 0)} of {fp['num_cases']} cases"
                                                      for m in fp["enface_modalities"]))
        for m in fp["enface_modalities"]:
            if not counts.get(m):
                lines.append(f"  {m}: listed in dataset.json, but no training case has this image (a dataset from "
                             "fpn_import: no scan's image could be placed; import_report.csv says why per scan)")
    return "\n".join(lines)
