"""Preprocessed cases on disk: ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/``.

Per case and configuration (``docs/layout.md``)::

    CASE.npy        float32 (C, B, depth, A)  normalised, depth-reduced volume
    CASE_seg.npy    uint8   (B, A)            label map (labelled cases only)
    CASE_<MOD>.npy  float32 (B, A)            en-face image scaled to [0, 1] (per modality present)
    CASE.json       properties; written last, so its presence marks a finished case
    preprocessing_complete.json   the completion record: deleted first, written after the last case

(file names and the writing itself: :class:`fpnunet.preprocessed_dataset.PreprocessedDataset`).

:func:`preprocess_case` turns a raw case into these files with the transforms of
:mod:`fpnunet.preprocessing.preprocess`; :func:`preprocess_dataset` does every training case in
a process pool. Re-running skips finished cases whose properties carry the same ``signature``
(a hash of the settings that shape the output and of the raw files' sizes and modification
times), so a case whose files or plan settings changed is redone; ``clean=True`` redoes
everything. Files are written atomically; leftovers of an interrupted run are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpnunet import paths
from fpnunet.errors import FPNError
from fpnunet.parallel import parallel_map
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.preprocessing.depth import resample_depth
from fpnunet.preprocessing.preprocess import class_locations, normalised_crop, read_case
from fpnunet.raw_dataset import CaseFiles, DatasetInfo, list_cases, load_dataset_json

PREPROCESS_VERSION = 1


# ----------------------------------------------------------------------------- one case
def preprocess_case(
    case_files: CaseFiles,
    info: DatasetInfo,
    plan: Plan,
    targets: dict[str, tuple[Configuration, Path]],
    retina_band: tuple[int, int] | None = None,
    signatures: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Preprocess one case into every ``targets[data_identifier] = (configuration, folder)``.

    The raw files are read and normalised once; only the depth resampling is per target. Files
    are written atomically, the properties json last. Returns the properties per identifier.
    """
    raw = read_case(case_files, info, plan)
    case = raw.case
    cropped, band, window = normalised_crop(raw.channels, plan, retina_band)
    fg = sorted(v for v in plan.labels.values() if v != 0)
    locations = class_locations(raw.label, fg, case) if raw.label is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for ident, (config, folder) in targets.items():
        folder.mkdir(parents=True, exist_ok=True)
        store = PreprocessedDataset(folder)
        store.start_case(case)  # unfinished until the new properties land
        data = np.stack([resample_depth(c, int(config.depth)) for c in cropped]).astype(np.float32, copy=False)
        props = {
            "case": case,
            "labelled": raw.label is not None,
            "enface": sorted(raw.enface),
            "raw_shape": list(raw.raw_shape),
            "shape_bda": [int(s) for s in raw.channels[0].shape],
            "spacing_bda": list(raw.spacing_bda),
            "geometry": raw.geometry.to_dict(),
            "retina_band": [int(band[0]), int(band[1])],
            "crop": [int(window[0]), int(window[1])],
            "class_locations": locations,
            "signature": (signatures or {}).get(ident, ""),
        }
        store.write_case(case, data, raw.label, raw.enface, list(plan.enface_modalities), props)
        out[ident] = props
    return out


@dataclass
class _Task:
    files: CaseFiles
    info: DatasetInfo
    plan: Plan
    targets: dict[str, tuple[Configuration, Path]]
    band: tuple[int, int] | None
    signatures: dict[str, str]


def _run_task(task: _Task) -> tuple[str, list[str]]:
    preprocess_case(task.files, task.info, task.plan, task.targets, task.band, task.signatures)
    return task.files.case, sorted(task.targets)


# ----------------------------------------------------------------------------- dataset
def case_signature(case_files: CaseFiles, plan: Plan, config: Configuration) -> str:
    """Hash of what shapes a case's output: plan settings, target depth and the raw files' stats."""
    files = [p for p in case_files.images if p is not None] + sorted(case_files.enface.values())
    if case_files.label is not None:
        files.append(case_files.label)
    stat = {}
    for p in files:
        st = Path(p).stat()
        stat[Path(p).name] = [st.st_size, st.st_mtime_ns]
    key = {
        "version": PREPROCESS_VERSION,
        "projection_axis": int(plan.projection_axis),
        "normalization": plan.normalization,
        "depth_crop": int(plan.depth_crop),
        "depth": int(config.depth),
        "enface_modalities": list(plan.enface_modalities),
        "files": stat,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def preprocess_dataset(
    dataset: str | int,
    plan: Plan,
    config_names: list[str] | None = None,
    num_processes: int | None = None,
    clean: bool = False,
    show_progress: bool = True,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Preprocess every ``imagesTr`` case of ``dataset`` for the configurations ``config_names``
    (default: all of the plan), once per distinct ``data_identifier``.

    Writes into ``$FPN_PREPROCESSED/DatasetXXX/<data_identifier>/``. Finished cases with an
    unchanged signature are skipped unless ``clean`` (which empties the identifier folders
    first). ``fingerprint`` (optional) supplies the retina bands found during verification.
    Returns ``{data_identifier: {"folder", "written", "skipped", "seconds"}}``.
    """
    name = paths.resolve_dataset(dataset)
    raw = paths.raw_root() / name
    out_root = paths.preprocessed_root() / name
    info = load_dataset_json(raw)
    if num_processes is None:
        num_processes = min(4, os.cpu_count() or 1)
    names = list(config_names) if config_names else list(plan.configurations)
    if not names:
        raise FPNError(f"the plan of {plan.dataset_name} has no configurations to preprocess")
    by_ident: dict[str, Configuration] = {}
    for cname in names:
        config = plan.configuration(cname)
        ident = str(config.data_identifier)
        if not ident or ident in (".", "..") or "/" in ident or "\\" in ident or ident.startswith("."):
            raise FPNError(
                f"plans.json: configuration {cname!r} has data_identifier {ident!r}; it must be a plain folder "
                f"name such as 'depth128'"
            )
        prev = by_ident.get(config.data_identifier)
        if prev is not None and int(prev.depth) != int(config.depth):
            raise FPNError(
                f"plans.json: configurations share data_identifier {config.data_identifier!r} but ask for "
                f"depth {prev.depth} and {config.depth}; give them different data_identifiers"
            )
        by_ident.setdefault(config.data_identifier, config)

    cases = [cf for cf in list_cases(raw, info, "Tr") if cf.images and all(p is not None for p in cf.images)]
    case_names = {cf.case for cf in cases}
    for ident in by_ident:
        folder = out_root / ident
        PreprocessedDataset(folder).remove_completion_record()  # incomplete until the record is written, last
        if clean and folder.exists():
            shutil.rmtree(folder)
        PreprocessedDataset(folder).tidy(case_names, list(plan.enface_modalities))

    summary = {ident: {"folder": str(out_root / ident), "written": 0, "skipped": 0, "seconds": 0.0}
               for ident in by_ident}
    bands = {c: tuple(v["retina_band"]) for c, v in (fingerprint or {}).get("cases", {}).items() if v}
    tasks: list[_Task] = []
    for cf in cases:
        targets: dict[str, tuple[Configuration, Path]] = {}
        sigs: dict[str, str] = {}
        for ident, config in by_ident.items():
            sig = case_signature(cf, plan, config)
            folder = out_root / ident
            if PreprocessedDataset(folder).is_done(cf.case, sig):
                summary[ident]["skipped"] += 1
                continue
            targets[ident] = (config, folder)
            sigs[ident] = sig
        if targets:
            tasks.append(_Task(cf, info, plan, targets, bands.get(cf.case), sigs))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for _, idents in parallel_map(_run_task, tasks, num_processes, show_progress, desc="preprocess"):
        for ident in idents:
            summary[ident]["written"] += 1
    seconds = time.perf_counter() - t0
    for ident in summary:
        summary[ident]["seconds"] = seconds
        PreprocessedDataset(out_root / ident).write_completion_record(sorted(case_names))
    return summary
