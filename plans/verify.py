"""Dataset verification: every problem of a raw dataset, one line each, in one :class:`DatasetError`.

Verification runs before any work is done, in three steps:

1. *structure* (no pixel data, this module): ``dataset.json``, file names in ``imagesTr``/
   ``labelsTr``/``enfaceTr``/``imagesTs``, missing channels, files that belong to no case;
2. *headers* (SimpleITK reads only the image information, :mod:`fpnunet.plans.verify_headers`):
   dimensionality, shapes of the channels, label shapes against the volume's en-face planes,
   hence the projection axis;
3. *content* (the slow part, one case per task in a process pool,
   :mod:`fpnunet.plans.verify_content`): readability, NaN/Inf, constant volumes, integer label
   values listed in ``dataset.json``.

:func:`check_files` runs steps 1 and 2 and collects their problems in a :class:`Report`;
:func:`fpnunet.plans.fingerprint.verify_and_fingerprint` adds step 3 (which also computes the
statistics) and raises the :class:`~fpnunet.errors.DatasetError` listing them all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fpnunet.errors import DatasetError, FPNError
from fpnunet.io import SUPPORTED_ENDINGS, file_ending, strip_ending
from fpnunet.plans.verify_headers import CaseCheck, check_headers, resolve_axis
from fpnunet.plans.verify_report import Report
from fpnunet.raw_dataset import (
    DatasetInfo,
    enface_dir,
    images_dir,
    labels_dir,
    list_cases,
    list_image_files,
    load_dataset_json,
)


def _check_dataset_json(rep: Report, info: DatasetInfo) -> None:
    keys = sorted(info.channel_names)
    if keys != [str(i) for i in range(len(keys))]:
        rep.add(f"dataset.json: channel_names keys must be \"0\", \"1\", ... in order; got {keys}")
    too_big = {k: v for k, v in info.labels.items() if not 0 <= v <= 255}
    if too_big:
        rep.add(f"dataset.json: label values must lie in 0..255 (label maps are stored as uint8); got {too_big}")
    if len(set(info.enface_modalities)) != len(info.enface_modalities):
        rep.add(f"dataset.json: enface_modalities has repeated names: {info.enface_modalities}")


def _check_images_folder(rep: Report, info: DatasetInfo, split: str) -> dict[str, dict[int, Path]]:
    """File names and channels of ``images{split}``; returns ``{case: {channel: path}}`` of named files."""
    folder = images_dir(rep.raw, split)
    if not folder.is_dir():
        if split == "Tr":
            rep.add(f"images{split}/: folder is missing (volumes go in imagesTr/CASE_0000{info.file_ending})")
        return {}
    grouped, bad = list_image_files(folder, info.file_ending)
    for p in bad:
        if not p.name.lower().endswith(info.file_ending.lower()):
            rep.add(f"{rep.rel(p)}: file ending does not match dataset.json file_ending {info.file_ending!r}")
        else:
            rep.add(
                f"{rep.rel(p)}: name lacks the channel suffix (expected CASE_0000{info.file_ending}, "
                f"CASE_0001{info.file_ending}, ...)"
            )
    if split == "Tr" and not grouped and not bad:
        rep.add(f"images{split}/: no volumes found (expected files named CASE_0000{info.file_ending})")
    n = info.num_channels
    for case, chans in sorted(grouped.items()):
        for ch, p in sorted(chans.items()):
            if ch >= n:
                rep.add(
                    f"{rep.rel(p)}: channel {ch} of case {case}, but dataset.json channel_names lists "
                    f"only {n} channel(s) {info.channel_names}"
                )
        for ch in range(n):
            if ch not in chans:
                name = info.channel_names.get(str(ch), "?")
                rep.add(
                    f"images{split}/{case}_{ch:04d}{info.file_ending}: missing channel {ch} ({name}) "
                    f"of case {case}"
                )
    return grouped


def _check_side_folder(rep: Report, info: DatasetInfo, folder: Path, cases: set[str]) -> None:
    """``labelsTr``/``enfaceTr``: every file must be an image belonging to an ``imagesTr`` case."""
    if not folder.is_dir():
        return
    seen: dict[str, Path] = {}
    mods = sorted(info.enface_modalities, key=len, reverse=True)
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if file_ending(p) not in SUPPORTED_ENDINGS:
            rep.add(f"{rep.rel(p)}: not an image file (supported endings: {', '.join(SUPPORTED_ENDINGS)})")
            continue
        stem = strip_ending(p.name)
        if folder == labels_dir(rep.raw, "Tr"):
            case, what = stem, "label"
        else:
            mod = next((m for m in mods if stem.endswith(f"_{m}") and len(stem) > len(m) + 1), None)
            if mod is None:
                rep.add(
                    f"{rep.rel(p)}: en-face file names must be CASE_MODALITY{info.file_ending} with MODALITY "
                    f"one of dataset.json enface_modalities {info.enface_modalities}"
                )
                continue
            case, what = stem[: -len(mod) - 1], f"en-face image ({mod})"
        if stem in seen:
            rep.add(f"{rep.rel(p)}: {what} of case {case} is also stored as {rep.rel(seen[stem])}; keep one")
            continue
        seen[stem] = p
        if case not in cases:
            rep.add(
                f"{rep.rel(p)}: {what} of case {case}, which has no volume "
                f"(expected imagesTr/{case}_0000{info.file_ending})"
            )


@dataclass
class FileChecks:
    """What steps 1 and 2 learnt about a raw dataset (``report`` holds their problems)."""

    raw: Path
    info: DatasetInfo
    report: Report
    checks: list[CaseCheck]
    """One per ``imagesTr`` case with named files, in case order."""
    axis: int | None
    """The projection axis (``None`` when it cannot be told; then ``report`` says why)."""
    num_test: int


def check_files(raw_folder: str | os.PathLike) -> FileChecks:
    """Steps 1 and 2 (structure, headers) on the raw dataset in ``raw_folder``.

    Raises :class:`DatasetError` at once when the folder or a readable ``dataset.json`` is
    missing; every other problem is collected in the returned ``report``.
    """
    raw = Path(raw_folder).absolute()
    if not raw.is_dir():
        raise DatasetError([f"{raw}: dataset folder not found"], header=f"{raw} cannot be verified")
    try:
        info = load_dataset_json(raw)
    except DatasetError:
        raise
    except FPNError as exc:
        raise DatasetError([str(exc)], header=f"{raw} failed verification") from None

    rep = Report(raw)
    _check_dataset_json(rep, info)
    grouped = _check_images_folder(rep, info, "Tr")
    _check_side_folder(rep, info, labels_dir(raw, "Tr"), set(grouped))
    _check_side_folder(rep, info, enface_dir(raw, "Tr"), set(grouped))
    test_grouped = _check_images_folder(rep, info, "Ts")

    explicit = info.projection_axis if isinstance(info.projection_axis, int) else None
    cases = [cf for cf in list_cases(raw, info, "Tr") if cf.case in grouped]
    checks = [check_headers(rep, info, cf, explicit) for cf in cases]
    for cf in list_cases(raw, info, "Ts") if test_grouped else []:
        if all(p is not None for p in cf.images):
            check_headers(rep, info, cf, None)
    axis = resolve_axis(rep, info, checks)
    return FileChecks(raw, info, rep, checks, axis, num_test=len(test_grouped))
