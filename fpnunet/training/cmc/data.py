"""Batches for the cmc trainer: labelled and unlabelled cases with their en-face images.

Each batch holds ``batch_size`` patches of labelled cases followed by ``unlabelled_batch_size``
patches of unlabelled cases (none when there are no unlabelled cases), as numpy arrays::

    data          float32 (N, C, Lb, D, La)  volume crop at full depth
    target        float32 (N, 1, Lb, La)     label values (0 for unlabelled rows)
    mask          float32 (N, 1, Lb, La)     1 inside the case
    enface        float32 (N, M, Lb, La)     the en-face images, one channel per modality (0 where missing)
    labelled      float32 (N,)               1 for labelled rows
    keys, batch_index, aug_seed              as :class:`fpnunet.training.data.EnfaceDataLoader`

Sampling follows :class:`~fpnunet.training.data.EnfaceDataLoader` (foreground oversampling on the
labelled rows, windows inside the case) and batch ``i`` of epoch ``e`` depends on
``(seed, e, i)`` only, so resumed runs see the same batches.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from fpnunet.errors import FPNError
from fpnunet.training.data import _npy_shape, _window, batch_rngs, scan_cases, worker_error

logger = logging.getLogger(__name__)


@dataclass
class CMCCase:
    name: str
    volume: Path
    label: Path | None
    enface: list[Path | None]
    shape_ba: tuple[int, int]
    locations: dict[int, np.ndarray] = field(default_factory=dict)


def scan_cmc_cases(data_dir: Path, labelled: list[str], unlabelled: list[str],
                   modalities: list[str]) -> tuple[list[CMCCase], list[CMCCase]]:
    """Check the files; labelled cases need their label, every case its volume. A missing en-face
    image is logged and fed as zeros."""
    lab = [CMCCase(r.name, r.volume, r.target, [], r.shape_ba, r.locations)
           for r in scan_cases(data_dir, labelled, "seg")] if labelled else []
    unl = []
    for case in unlabelled:
        vol = data_dir / f"{case}.npy"
        if not vol.is_file():
            raise FPNError(f"{vol}: preprocessed volume of case {case!r} not found (re-run preprocessing)")
        shape, _ = _npy_shape(vol)
        if len(shape) != 4:
            raise FPNError(f"{vol}: expected a float32 volume (C, B, D, A), got shape {shape}")
        unl.append(CMCCase(case, vol, None, [], (shape[1], shape[3])))
    missing = 0
    for rec in lab + unl:
        for mod in modalities:
            path = data_dir / f"{rec.name}_{mod}.npy"
            if path.is_file():
                shape, _ = _npy_shape(path)
                if shape != rec.shape_ba:
                    raise FPNError(f"{path}: shape {shape} does not match the en-face plane {rec.shape_ba} "
                                   f"of {rec.name}")
                rec.enface.append(path)
            else:
                rec.enface.append(None)
                missing += 1
    if missing:
        logger.warning("%d en-face image(s) of the cmc training cases are missing and are fed as zeros", missing)
    if not lab:
        raise FPNError(f"{data_dir}: the cmc trainer needs at least one labelled training case")
    return lab, unl


class CMCDataLoader(SlimDataLoaderBase):
    """Infinite (or ``num_batches`` long) stream of labelled + unlabelled patches with en-face images."""

    def __init__(self, data_dir: str | Path, labelled: list[str], unlabelled: list[str], modalities: list[str],
                 patch_size: tuple[int, int], batch_size: int, unlabelled_batch_size: int, *,
                 oversample_foreground: float = 0.33, margin: tuple[int, int] = (0, 0), seed: int = 0,
                 epoch: int = 0, num_batches: int | None = None, num_workers: int = 1) -> None:
        self.data_dir = Path(data_dir)
        lab, unl = scan_cmc_cases(self.data_dir, list(labelled), list(unlabelled), list(modalities))
        super().__init__(lab, int(batch_size), max(1, int(num_workers)))
        self.labelled, self.unlabelled = lab, unl
        self.modalities = list(modalities)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.margin = (int(margin[0]), int(margin[1]))
        self.load_size = (self.patch_size[0] + 2 * self.margin[0], self.patch_size[1] + 2 * self.margin[1])
        self.n_unlabelled = int(unlabelled_batch_size) if unl else 0
        self.oversample = float(oversample_foreground)
        self.seed, self.epoch, self.num_batches = int(seed), int(epoch), num_batches
        shape, _ = _npy_shape(lab[0].volume)
        self.num_channels, self.depth = int(shape[0]), int(shape[2])
        self._count = 0
        self._arrays: dict[Path, np.ndarray] = {}

    def _array(self, path: Path) -> np.ndarray:
        if path not in self._arrays:
            try:
                self._arrays[path] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise FPNError(f"{path}: cannot read as a .npy array ({exc})") from None
        return self._arrays[path]

    def make_batch(self, index: int) -> dict[str, Any]:
        rng, aug_seed = batch_rngs(self.seed, self.epoch, index)
        nl, nu = self.batch_size, self.n_unlabelled
        n, (lb, la), (pb, pa), (mb, ma) = nl + nu, self.load_size, self.patch_size, self.margin
        picks = [self.labelled[int(i)] for i in rng.choice(len(self.labelled), nl, replace=len(self.labelled) < nl)]
        if nu:
            picks += [self.unlabelled[int(i)]
                      for i in rng.choice(len(self.unlabelled), nu, replace=len(self.unlabelled) < nu)]
        expected = nl * self.oversample
        n_fg = int(math.floor(expected)) + int(rng.random() < expected - math.floor(expected))
        data = np.zeros((n, self.num_channels, lb, self.depth, la), np.float32)
        target = np.zeros((n, 1, lb, la), np.float32)
        mask = np.zeros((n, 1, lb, la), np.float32)
        enface = np.zeros((n, len(self.modalities), lb, la), np.float32)
        labelled = np.zeros((n,), np.float32)
        labelled[:nl] = 1.0
        for j, rec in enumerate(picks):
            centre: tuple[int, int] | tuple[None, None] = (None, None)
            if nl - n_fg <= j < nl and rec.locations:
                classes = sorted(rec.locations)
                locs = rec.locations[classes[int(rng.integers(len(classes)))]]
                b, a = locs[int(rng.integers(len(locs)))]
                centre = (int(b), int(a))
            sb, sa = rec.shape_ba
            b0 = _window(rng, sb, pb, centre[0]) - mb
            a0 = _window(rng, sa, pa, centre[1]) - ma
            cb0, cb1, ca0, ca1 = max(b0, 0), min(b0 + lb, sb), max(a0, 0), min(a0 + la, sa)
            if cb1 <= cb0 or ca1 <= ca0:
                continue
            ob, oa = slice(cb0 - b0, cb1 - b0), slice(ca0 - a0, ca1 - a0)
            data[j, :, ob, :, oa] = self._array(rec.volume)[:, cb0:cb1, :, ca0:ca1]
            if rec.label is not None:
                target[j, 0, ob, oa] = self._array(rec.label)[cb0:cb1, ca0:ca1]
            for m, path in enumerate(rec.enface):
                if path is not None:
                    enface[j, m, ob, oa] = self._array(path)[cb0:cb1, ca0:ca1]
            mask[j, 0, ob, oa] = 1.0
        return {"data": data, "target": target, "mask": mask, "enface": enface, "labelled": labelled,
                "keys": [r.name for r in picks], "batch_index": index, "aug_seed": aug_seed}

    def generate_train_batch(self) -> dict[str, Any]:
        index = self.thread_id + self._count * self.number_of_threads_in_multithreaded
        if self.num_batches is not None and index >= self.num_batches:
            raise StopIteration
        self._count += 1
        try:
            return self.make_batch(index)
        except Exception as exc:  # noqa: BLE001  re-raised in the main process
            return worker_error(exc, f"data loading of batch {index} (worker {self.thread_id})")
