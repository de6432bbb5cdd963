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
from pathlib import Path
from typing import Any

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.cases import CaseRecord, _npy_shape, attach_enface, scan_cases
from fpnunet.training.data import PatchLoader, batch_rngs, foreground_centre, foreground_rows

logger = logging.getLogger(__name__)


def scan_cmc_cases(data_dir: Path, labelled: list[str], unlabelled: list[str],
                   modalities: list[str]) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """Check the files; labelled cases need their label, every case its volume. A missing en-face
    image is logged and fed as zeros."""
    lab = scan_cases(data_dir, labelled, "seg") if labelled else []
    unl = []
    for case in unlabelled:
        vol = PreprocessedDataset(data_dir).volume_file(case)
        if not vol.is_file():
            raise FPNError(f"{vol}: preprocessed volume of case {case!r} not found (re-run preprocessing)")
        shape, _ = _npy_shape(vol)
        if len(shape) != 4:
            raise FPNError(f"{vol}: expected a float32 volume (C, B, D, A), got shape {shape}")
        unl.append(CaseRecord(case, vol, None, (shape[1], shape[3])))
    missing = attach_enface(data_dir, lab + unl, modalities, required=False)
    if missing:
        logger.warning("%d en-face image(s) of the cmc training cases are missing and are fed as zeros", missing)
    if not lab:
        raise FPNError(f"{data_dir}: the cmc trainer needs at least one labelled training case")
    return lab, unl


class CMCDataLoader(PatchLoader):
    """Infinite (or ``num_batches`` long) stream of labelled + unlabelled patches with en-face images."""

    def __init__(self, data_dir: str | Path, labelled: list[str], unlabelled: list[str], modalities: list[str],
                 patch_size: tuple[int, int], batch_size: int, unlabelled_batch_size: int, *,
                 oversample_foreground: float = 0.33, margin: tuple[int, int] = (0, 0), seed: int = 0,
                 epoch: int = 0, num_batches: int | None = None, num_workers: int = 1) -> None:
        self.data_dir = Path(data_dir)
        lab, unl = scan_cmc_cases(self.data_dir, list(labelled), list(unlabelled), list(modalities))
        super().__init__(lab, int(batch_size), max(1, int(num_workers)))
        self.setup(lab, patch_size, margin, list(modalities), seed, epoch, num_batches, 0, 1)
        self.labelled, self.unlabelled = lab, unl
        self.modalities = list(modalities)
        self.n_unlabelled = int(unlabelled_batch_size) if unl else 0
        self.oversample = float(oversample_foreground)

    def make_batch(self, index: int) -> dict[str, Any]:
        rng, aug_seed = batch_rngs(self.seed, self.epoch, index)
        nl, nu = self.batch_size, self.n_unlabelled
        picks = [self.labelled[int(i)] for i in rng.choice(len(self.labelled), nl, replace=len(self.labelled) < nl)]
        if nu:
            picks += [self.unlabelled[int(i)]
                      for i in rng.choice(len(self.unlabelled), nu, replace=len(self.unlabelled) < nu)]
        n_fg = foreground_rows(rng, nl, self.oversample)
        batch = self.empty_batch(nl + nu)
        labelled = np.zeros((nl + nu,), np.float32)
        labelled[:nl] = 1.0
        for j, rec in enumerate(picks):
            centre = foreground_centre(rng, rec) if nl - n_fg <= j < nl else (None, None)
            self.read_patch(rng, rec, centre, batch, j)
        return {**batch, "labelled": labelled, "keys": [r.name for r in picks], "batch_index": index,
                "aug_seed": aug_seed}
