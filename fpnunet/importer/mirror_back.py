"""Predictions of scans imported with ``--mirror-os`` flipped back to the device's orientation."""
from __future__ import annotations

import shutil
from pathlib import Path

from fpnunet.errors import FPNError
from fpnunet.importer.geometry import mirror_a
from fpnunet.io import SUPPORTED_ENDINGS, read_image, strip_ending, write_image
from fpnunet.raw_dataset import dataset_file, read_dataset_json


def mirror_back(predictions: Path, raw_dataset: Path, output: Path) -> tuple[int, int]:
    """Copy every prediction ``CASE<ending>`` of ``predictions`` to ``output``, flipping the A-scan
    axis of the cases ``dataset.json`` ``visits`` marks ``"mirrored": true``. Returns
    ``(flipped, copied)``."""
    ds_path = dataset_file(raw_dataset)
    if not ds_path.is_file():
        raise FPNError(f"{ds_path}: missing; --mirror-back needs the dataset fpn_import wrote")
    visits = read_dataset_json(raw_dataset).get("visits")
    if not isinstance(visits, dict):
        raise FPNError(f"{ds_path}: no 'visits' (was this dataset written by fpn_import?)")
    if not predictions.is_dir():
        raise FPNError(f"--mirror-back {predictions}: not a folder")
    if output.resolve() == predictions.resolve():
        raise FPNError(f"-o {output}: must differ from the predictions folder")
    files = [p for p in sorted(predictions.iterdir())
             if p.is_file() and any(p.name.lower().endswith(e) for e in SUPPORTED_ENDINGS)]
    if not files:
        raise FPNError(f"--mirror-back {predictions}: no prediction images in this folder")
    foreign = [strip_ending(p.name) for p in files if strip_ending(p.name) not in visits]
    if foreign:
        raise FPNError(f"--mirror-back {predictions}: {len(foreign)} of {len(files)} prediction(s) are of cases that "
                       f"{raw_dataset.name} does not have (e.g. {foreign[0]}); is -d the dataset they were imported "
                       "into? nothing was written")
    flipped = copied = 0
    output.mkdir(parents=True, exist_ok=True)
    for p in files:
        case = strip_ending(p.name)
        if visits.get(case, {}).get("mirrored"):
            img = read_image(p)
            write_image(output / p.name, mirror_a(img.array), img.spacing, img.origin, img.direction)
            flipped += 1
        else:
            shutil.copyfile(p, output / p.name)
            copied += 1
    return flipped, copied
