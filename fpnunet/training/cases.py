"""The cases of a preprocessed folder as the training loaders see them: one :class:`CaseRecord`
per case (volume and target files checked for shape and dtype without reading them, foreground
locations for oversampling, the en-face input images a network asks for).

:func:`scan_cases` builds the records (mode ``"seg"``: ``CASE_seg.npy`` labels; an en-face mode:
``CASE_<MOD>.npy`` targets, cases without one left out with a warning); :func:`attach_enface` adds
the ``CASE_<MOD>.npy`` input images. Every problem is an :class:`FPNError` naming the file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PreprocessedDataset, check_finite
from fpnunet.training.enface_inputs import missing_message

logger = logging.getLogger("fpnunet.training.data")  # the loaders' logger, as before the split

MAX_LOCATIONS = 1000
"""Foreground pixels kept per class when ``class_locations`` must be computed from a label."""


@dataclass
class CaseRecord:
    """One usable case: its files, en-face shape ``(B, A)`` and foreground pixels per class."""

    name: str
    volume: Path
    target: Path | None
    """The en-face target (label map or image); ``None``: an unlabelled case (cmc trainer)."""
    shape_ba: tuple[int, int]
    locations: dict[int, np.ndarray] = field(default_factory=dict)
    """class -> int array ``(K, 2)`` of ``(b, a)`` foreground pixels (seg mode only)."""
    enface: list[Path | None] = field(default_factory=list)
    """En-face input images in the loader's modality order (``None``: missing, read as zeros)."""


def target_file(data_dir: Path, case: str, mode: str) -> Path:
    """The en-face target file of ``case`` for ``mode`` (``"seg"`` or a modality name)."""
    return PreprocessedDataset(data_dir).target_file(case, mode)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise FPNError(f"{path}: cannot read as a .npy array ({exc})") from None
    return tuple(arr.shape), arr.dtype


def _locations(data_dir: Path, case: str, label_path: Path) -> dict[int, np.ndarray]:
    stored = PreprocessedDataset(data_dir).class_locations(case)
    if stored is not None:
        return stored
    label = np.asarray(np.load(label_path, mmap_mode="r"))
    rng = np.random.default_rng(0)
    out = {}
    for k in np.unique(label):
        if k == 0:
            continue
        pix = np.argwhere(label == k)
        if len(pix) > MAX_LOCATIONS:
            pix = pix[np.sort(rng.choice(len(pix), MAX_LOCATIONS, replace=False))]
        out[int(k)] = pix.astype(np.int64)
    return out


def scan_cases(data_dir: str | Path, cases: list[str], mode: str = "seg") -> list[CaseRecord]:
    """Check the files of ``cases`` in ``data_dir`` (a ``<data_identifier>`` folder) for ``mode``.

    Mode ``"seg"``: every case must have ``CASE_seg.npy`` (else :class:`FPNError` naming the file).
    En-face modes: cases without ``CASE_<MOD>.npy`` are left out with a logged message (SSL uses
    every case that has the modality); none left is an :class:`FPNError`. All volumes must share
    channels and depth, and each target must be ``(B, A)`` of its volume.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FPNError(f"{data_dir}: preprocessed data folder not found; run fpn_plan_and_preprocess first")
    if not cases:
        raise FPNError(f"{data_dir}: no cases given to load")
    records: list[CaseRecord] = []
    missing: list[str] = []
    cd: tuple[int, int] | None = None
    first = ""
    for case in cases:
        vol = PreprocessedDataset(data_dir).volume_file(case)
        if not vol.is_file():
            raise FPNError(f"{vol}: preprocessed volume of case {case!r} not found (re-run preprocessing)")
        tgt = target_file(data_dir, case, mode)
        if not tgt.is_file():
            if mode == "seg":
                raise FPNError(f"{tgt}: label of case {case!r} not found (is the case labelled? re-run preprocessing)")
            missing.append(case)
            continue
        vshape, _ = _npy_shape(vol)
        if len(vshape) != 4:
            raise FPNError(f"{vol}: expected a float32 volume (C, B, D, A), got shape {vshape}")
        if cd is None:
            cd, first = (vshape[0], vshape[2]), case
        elif (vshape[0], vshape[2]) != cd:
            raise FPNError(
                f"{vol}: {vshape[0]} channel(s) and depth {vshape[2]}, but case {first!r} has {cd[0]} and {cd[1]}; "
                "all cases of a data folder must share them (re-run preprocessing)"
            )
        tshape, _ = _npy_shape(tgt)
        if tshape != (vshape[1], vshape[3]):
            raise FPNError(f"{tgt}: shape {tshape} does not match the en-face plane (B, A) = "
                           f"{(vshape[1], vshape[3])} of {vol.name}")
        check_finite(vol)  # once per case, before any worker reads it (NaN would train on NaN losses)
        check_finite(tgt)  # an en-face target (float); a label map is skipped
        locs = _locations(data_dir, case, tgt) if mode == "seg" else {}
        records.append(CaseRecord(case, vol, tgt, (vshape[1], vshape[3]), locs))
    if missing:
        logger.warning("%d of %d case(s) have no %s image and are left out: %s%s", len(missing), len(cases), mode,
                       ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")
    if not records:
        raise FPNError(f"{data_dir}: none of the {len(cases)} case(s) has a {mode} image ({mode}.npy files)")
    return records


def attach_enface(data_dir: Path, records: list[CaseRecord], modalities: list[str], required: bool) -> int:
    """Set each record's ``enface`` to its ``CASE_<MOD>.npy`` files (checked to be ``(B, A)`` of its
    volume). A missing one is an :class:`FPNError` naming the case when ``required``, else ``None``
    (read as zeros); returns how many were missing."""
    missing = 0
    for rec in records:
        rec.enface = []
        for mod in modalities:
            path = PreprocessedDataset(data_dir).enface_file(rec.name, mod)
            if not path.is_file():
                if required:
                    raise FPNError(missing_message(path, rec.name, mod, modalities))
                rec.enface.append(None)
                missing += 1
                continue
            shape, _ = _npy_shape(path)
            if shape != rec.shape_ba:
                raise FPNError(f"{path}: shape {shape} does not match the en-face plane {rec.shape_ba} of {rec.name}")
            rec.enface.append(path)
    return missing
