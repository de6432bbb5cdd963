"""A small raw dataset on disk in the raw layout of docs/layout.md, for the verification, fingerprint, io and
preprocessing tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fpnunet.io import write_image

SHAPE = (4, 40, 16)  # (B, D, A)
BAND = (15, 25)  # retina rows [top, bottom)
SPACING = (0.12, 0.004, 0.011)  # (sB, sD, sA)


def make_volume(shape=SHAPE, band=BAND, seed=0, axis=1) -> np.ndarray:
    """A ``(B, D, A)`` volume (background ~10, retina ~110 on ``band``) with depth moved to ``axis``."""
    rng = np.random.default_rng(seed)
    v = rng.normal(10.0, 2.0, shape).astype(np.float32)
    v[:, band[0] : band[1]] += 100.0 + rng.normal(0.0, 10.0, (shape[0], band[1] - band[0], shape[2]))
    return np.moveaxis(v, 1, axis)


def make_label(shape=SHAPE) -> np.ndarray:
    """``(B, A)`` label with a 2 x 8 rectangle of class 1 (fraction 16 / (B * A))."""
    lab = np.zeros((shape[0], shape[2]), np.uint8)
    lab[1:3, 4:12] = 1
    return lab


def make_raw_dataset(
    root: Path,
    name: str = "Dataset901_Tiny",
    n: int = 3,
    labelled: tuple[int, ...] = (0, 1),
    shape: tuple[int, int, int] = SHAPE,
    band: tuple[int, int] = BAND,
    axis: int = 1,
    ending: str = ".nii.gz",
    channels: int = 1,
    enface: tuple[str, ...] = ("FAF",),
    enface_shape: tuple[int, int] | None = None,
    num_test: int = 0,
    **json_extra,
) -> Path:
    """A tiny raw dataset: ``n`` cases ``case_000...``, the first ``labelled`` ones with labels,
    every case with the ``enface`` modalities, volumes stored with depth on numpy ``axis``."""
    folder = root / name
    for sub in ("imagesTr", "labelsTr", "enfaceTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    spacing_raw = list(SPACING)
    spacing_raw.insert(axis, spacing_raw.pop(1))
    for i in range(n):
        case = f"case_{i:03d}"
        for c in range(channels):
            vol = make_volume(shape, band, seed=i * 10 + c, axis=axis)
            write_image(folder / "imagesTr" / f"{case}_{c:04d}{ending}", vol, tuple(spacing_raw))
        if i in labelled:
            write_image(folder / "labelsTr" / f"{case}{ending}", make_label(shape), (SPACING[0], SPACING[2]))
        for mod in enface:
            es = enface_shape or (shape[0], shape[2])
            img = np.random.default_rng(i).uniform(0, 200, es).astype(np.float32)
            write_image(folder / "enfaceTr" / f"{case}_{mod}{ending}", img, (1.0, 1.0))
    if num_test:
        (folder / "imagesTs").mkdir()
        for i in range(num_test):
            vol = make_volume(shape, band, seed=99, axis=axis)
            write_image(folder / "imagesTs" / f"test_{i:03d}_0000{ending}", vol, tuple(spacing_raw))
    dj = {"name": name.split("_", 1)[1], "channel_names": {str(c): f"OCT{c}" for c in range(channels)},
          "enface_modalities": list(enface), "labels": {"background": 0, "GA": 1}, "file_ending": ending,
          "projection_axis": "auto"}
    dj.update(json_extra)
    (folder / "dataset.json").write_text(json.dumps(dj))
    return folder

