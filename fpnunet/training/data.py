"""Random en-face patches at full depth from a preprocessed folder (a batchgenerators data loader).

Reads ``<data_identifier>/CASE.npy`` (float32 ``(C, B, D, A)``) memory-mapped, plus the en-face
target of the mode: ``CASE_seg.npy`` (uint8 ``(B, A)``, mode ``"seg"``) or ``CASE_<MOD>.npy``
(float32 ``(B, A)`` in [0, 1], mode ``"FAF"``, ``"SLO"``, ... ; FAF is inverted, ``1 - FAF``, by
default as in the paper). Each batch is a dict of numpy arrays::

    data    float32 (N, C, Lb, D, La)  volume crop at full depth (0 outside the case)
    target  float32 (N, 1, Lb, La)     label values (seg) or the en-face image (0 outside)
    mask    float32 (N, 1, Lb, La)     1 on pixels inside the case, 0 on padding
    enface  float32 (N, M, Lb, La)     only with ``enface=[MOD, ...]``: en-face images read as network
                                       inputs (``CASE_<MOD>.npy``, not inverted), same window
    keys    list[str]                  case names
    batch_index  int                   position of the batch in the loader's sequence
    aug_seed     uint32 (4,)           seed of this batch's augmentation (consumed by the transforms)

``(Lb, La) = patch + 2 * margin``: the loader reads a margin around the patch so that a later
zoom-out (scaling) still sees real data; the transforms crop back to the patch. With margin 0 the
arrays are patch-sized.

**Sampling.** Cases are drawn uniformly (without replacement within a batch when there are at least
``N`` cases). A share ``oversample_foreground`` of each batch (``floor(N p)`` samples, plus one more
with probability ``frac(N p)``: the expected share is exactly ``p``) is centred on a random
foreground pixel of the case (``class_locations`` of ``CASE.json``, else found in the label; class
first, uniformly among the classes present); the others, and foreground samples of cases without
foreground, are placed uniformly. A patch is kept inside the case where the case is large enough
and holds the whole case otherwise (padding, ``mask`` 0).

**Determinism.** Batch number ``i`` is drawn from ``SeedSequence([seed, epoch, i])`` and nothing
else: with ``W`` workers, worker ``w`` makes batches ``w, w + W, w + 2W, ...`` and batchgenerators'
augmenter returns them in order, so the sequence of batches depends only on ``(seed, epoch)``, not
on the number of workers nor on the global numpy state. Under distributed training rank ``r`` of
``R`` makes batches ``r, r + R, r + 2R, ...`` of that sequence (its ``k``-th batch is number
``k R + r``): each rank's batches depend on ``(seed, epoch, rank)`` only, the ranks never draw the
same batch, and with one rank the sequence is the single-process one.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from fpnunet.errors import FPNError
from fpnunet.lifeline import die_with_parent
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.cases import CaseRecord, _npy_shape, attach_enface, scan_cases, target_file

__all__ = ["CaseRecord", "scan_cases", "attach_enface", "target_file", "batch_rngs", "foreground_rows",
           "foreground_centre", "PatchLoader", "EnfaceDataLoader", "worker_error", "raise_if_error"]

logger = logging.getLogger(__name__)


def batch_rngs(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, np.ndarray]:
    """The sampling generator and the augmentation seed (uint32 ``(4,)``) of batch ``index``."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    load_ss, aug_ss = ss.spawn(2)
    return np.random.default_rng(load_ss), aug_ss.generate_state(4, np.uint32)


def _window(rng: np.random.Generator, size: int, patch: int, centre: int | None) -> int:
    """Start of a ``patch``-long window on an axis of ``size`` pixels (negative: padded before).

    Inside the case when ``size >= patch`` (centred on ``centre`` where given, then clamped), else
    containing the whole case.
    """
    lo, hi = (0, size - patch) if size >= patch else (size - patch, 0)
    if centre is None:
        return int(rng.integers(lo, hi + 1))
    return int(min(max(centre - patch // 2, lo), hi))


def foreground_rows(rng: np.random.Generator, n: int, share: float) -> int:
    """How many of ``n`` rows are centred on foreground: ``floor(n p)`` plus one more with
    probability ``frac(n p)``."""
    expected = n * share
    return int(math.floor(expected)) + int(rng.random() < expected - math.floor(expected))


def foreground_centre(rng: np.random.Generator, rec: CaseRecord) -> tuple[int, int] | tuple[None, None]:
    """A random foreground pixel of ``rec`` (class first, uniformly among its classes), or no centre."""
    if not rec.locations:
        return (None, None)
    classes = sorted(rec.locations)
    locs = rec.locations[classes[int(rng.integers(len(classes)))]]
    b, a = locs[int(rng.integers(len(locs)))]
    return (int(b), int(a))


class PatchLoader(SlimDataLoaderBase):
    """What the en-face patch loaders share: the batch index sequence (seed, epoch, rank), lazily
    memory-mapped arrays, and :meth:`read_patch`, which places one window and copies the volume,
    target and en-face inputs of a case into row ``j`` of a batch."""

    def setup(self, records: list[CaseRecord], patch_size: tuple[int, int], margin: tuple[int, int],
              enface: list[str], seed: int, epoch: int, num_batches: int | None, rank: int, world_size: int) -> None:
        if len(patch_size) != 2 or min(patch_size) < 1:
            raise FPNError(f"patch_size must be an en-face size (B, A) of positive ints, got {patch_size}")
        if not 0 <= rank < world_size:
            raise FPNError(f"rank {rank} is not in [0, world_size={world_size})")
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.margin = (int(margin[0]), int(margin[1]))
        self.load_size = (self.patch_size[0] + 2 * self.margin[0], self.patch_size[1] + 2 * self.margin[1])
        self.enface_modalities = list(enface)
        self.seed, self.epoch, self.num_batches = int(seed), int(epoch), num_batches
        self.rank, self.world_size = int(rank), int(world_size)
        vshape, _ = _npy_shape(records[0].volume)
        self.num_channels, self.depth = int(vshape[0]), int(vshape[2])
        self._count = 0  # batches made by this worker
        self._arrays: dict[Path, np.ndarray] = {}
        self._parent_pid = os.getpid()

    def set_thread_id(self, thread_id: int) -> None:
        """Called by batchgenerators first thing in each worker: the worker also learns to die with
        the training process (:func:`fpnunet.lifeline.die_with_parent`), so ``kill -9`` leaves no orphan."""
        super().set_thread_id(thread_id)
        if os.getpid() != self._parent_pid:
            die_with_parent(self._parent_pid)

    def next_index(self) -> int:
        """Index of the batch this worker makes next: ``thread_id + k * num_workers`` among this
        rank's batches, i.e. ``(thread_id + k * num_workers) * world_size + rank`` in the sequence."""
        return (self.thread_id + self._count * self.number_of_threads_in_multithreaded) * self.world_size + self.rank

    def array(self, path: Path) -> np.ndarray:
        if path not in self._arrays:  # opened lazily, so each worker maps its own files
            try:
                self._arrays[path] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise FPNError(f"{path}: cannot read as a .npy array ({exc})") from None
        return self._arrays[path]

    def empty_batch(self, n: int) -> dict[str, np.ndarray]:
        """Zero arrays ``data``, ``target``, ``mask`` (and ``enface`` when the loader reads en-face inputs)."""
        lb, la = self.load_size
        out = {"data": np.zeros((n, self.num_channels, lb, self.depth, la), np.float32),
               "target": np.zeros((n, 1, lb, la), np.float32), "mask": np.zeros((n, 1, lb, la), np.float32)}
        if self.enface_modalities:
            out["enface"] = np.zeros((n, len(self.enface_modalities), lb, la), np.float32)
        return out

    def read_patch(self, rng: np.random.Generator, rec: CaseRecord, centre: tuple[int, int] | tuple[None, None],
                   batch: dict[str, np.ndarray], j: int, invert: bool = False) -> None:
        """Place a window on ``rec`` (centred on ``centre`` where given) and fill row ``j`` of ``batch``."""
        (lb, la), (pb, pa), (mb, ma) = self.load_size, self.patch_size, self.margin
        sb, sa = rec.shape_ba
        b0 = _window(rng, sb, pb, centre[0]) - mb
        a0 = _window(rng, sa, pa, centre[1]) - ma
        # intersection of the load window with the case, in case and in output coordinates
        cb0, cb1, ca0, ca1 = max(b0, 0), min(b0 + lb, sb), max(a0, 0), min(a0 + la, sa)
        if cb1 <= cb0 or ca1 <= ca0:
            return
        ob, oa = slice(cb0 - b0, cb1 - b0), slice(ca0 - a0, ca1 - a0)
        batch["data"][j, :, ob, :, oa] = self.array(rec.volume)[:, cb0:cb1, :, ca0:ca1]
        if rec.target is not None:
            t = np.asarray(self.array(rec.target)[cb0:cb1, ca0:ca1], dtype=np.float32)
            batch["target"][j, 0, ob, oa] = 1.0 - t if invert else t
        for m, path in enumerate(rec.enface):
            if path is not None:
                batch["enface"][j, m, ob, oa] = self.array(path)[cb0:cb1, ca0:ca1]
        batch["mask"][j, 0, ob, oa] = 1.0

    def make_batch(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def generate_train_batch(self) -> dict[str, Any]:
        index = self.next_index()
        if self.num_batches is not None and index // self.world_size >= self.num_batches:
            raise StopIteration
        self._count += 1
        try:
            return self.make_batch(index)
        except Exception as exc:  # noqa: BLE001  reported in the worker, re-raised in the main process
            return worker_error(exc, f"data loading of batch {index} (worker {self.thread_id})")


class EnfaceDataLoader(PatchLoader):
    """Infinite (or ``num_batches`` long) stream of random en-face patches at full depth.

    Parameters
    ----------
    data_dir: the ``<data_identifier>`` folder of the preprocessed dataset.
    cases: case names to sample from (see :func:`scan_cases` for what is checked / left out).
    patch_size: en-face patch ``(B_p, A_p)``.
    batch_size: ``N``.
    mode: ``"seg"`` (labels) or an en-face modality (``"FAF"``, ``"SLO"``, ...).
    invert: use ``1 - image`` as the target (default: True for FAF, else False; ignored for seg).
    oversample_foreground: expected share of each batch centred on foreground (seg mode only).
    margin: extra pixels ``(mB, mA)`` read on each side of the patch (see module docstring).
    enface: en-face modalities read as network inputs into ``enface (N, M, Lb, La)`` (every case
        must have them: :func:`attach_enface`); default none.
    seed, epoch: the batch sequence depends on these only.
    num_batches: stop after this many batches in total (None: infinite).
    num_workers: number of workers that will share the sequence (1 in-process).
    rank, world_size: this process's share of the sequence under distributed training.
    slabs: read each case's ``slabs`` depth-slab means (``CASE_slabs<S>.npy``, written once by
        :meth:`~fpnunet.preprocessed_dataset.PreprocessedDataset.slab_means`) instead of its volume,
        for a network that sees the volume only through them (``data`` is then ``(N, C, Lb, S, La)``).
    """

    def __init__(
        self,
        data_dir: str | Path,
        cases: list[str],
        patch_size: tuple[int, int],
        batch_size: int,
        *,
        mode: str = "seg",
        invert: bool | None = None,
        oversample_foreground: float = 0.33,
        margin: tuple[int, int] = (0, 0),
        enface: list[str] | tuple[str, ...] = (),
        seed: int = 0,
        epoch: int = 0,
        num_batches: int | None = None,
        num_workers: int = 1,
        rank: int = 0,
        world_size: int = 1,
        slabs: int | None = None,
    ) -> None:
        records = scan_cases(data_dir, list(cases), mode)
        if slabs:
            owner = PreprocessedDataset(Path(data_dir))
            for rec in records:
                rec.volume = owner.slab_means(rec.name, slabs)
        attach_enface(Path(data_dir), records, list(enface), required=True)
        super().__init__(records, int(batch_size), max(1, int(num_workers)))
        if batch_size < 1:
            raise FPNError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise FPNError(f"oversample_foreground must lie in [0, 1], got {oversample_foreground}")
        self.setup(records, patch_size, margin, list(enface), seed, epoch, num_batches, rank, world_size)
        self.records = records
        self.data_dir = Path(data_dir)
        self.mode = mode
        self.invert = (mode.upper() == "FAF") if invert is None else bool(invert)
        if mode == "seg":
            self.invert = False
        self.oversample = float(oversample_foreground) if mode == "seg" else 0.0

    @property
    def case_names(self) -> list[str]:
        return [r.name for r in self.records]

    def make_batch(self, index: int) -> dict[str, Any]:
        """Batch number ``index`` of the sequence (a pure function of seed, epoch and index)."""
        rng, aug_seed = batch_rngs(self.seed, self.epoch, index)
        n, n_cases = self.batch_size, len(self.records)
        picks = rng.choice(n_cases, size=n, replace=n_cases < n)
        n_fg = foreground_rows(rng, n, self.oversample)
        batch = self.empty_batch(n)
        keys = []
        for j, ci in enumerate(picks):
            rec = self.records[int(ci)]
            keys.append(rec.name)
            centre = foreground_centre(rng, rec) if j >= n - n_fg else (None, None)
            self.read_patch(rng, rec, centre, batch, j, self.invert)
        return {**batch, "keys": keys, "batch_index": index, "aug_seed": aug_seed}


def worker_error(exc: BaseException, where: str) -> dict[str, Any]:
    """Report ``exc`` with its traceback here and wrap it as an item the main process re-raises
    (see :func:`raise_if_error`). In a worker process the traceback is written to stderr at once
    (whatever logging the parent configured); in-process it is only logged at debug level, since
    it is re-raised right away."""
    tb = traceback.format_exc()
    if multiprocessing.parent_process() is not None:
        print(f"[fpnunet data worker] error in {where}:\n{tb}", file=sys.stderr, flush=True)
    else:
        logger.debug("error in %s:\n%s", where, tb)
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": tb, "where": where,
            "user_error": isinstance(exc, FPNError)}


def raise_if_error(item: dict[str, Any]) -> None:
    """Re-raise an error item made by :func:`worker_error`: :class:`FPNError` for user errors (a
    missing or corrupt file), else ``RuntimeError`` carrying the worker's traceback."""
    if "error" not in item:
        return
    if item.get("user_error"):
        raise FPNError(f"{item['error'].split(': ', 1)[-1]} (in {item['where']})")
    raise RuntimeError(f"{item['where']} failed: {item['error']}\nworker traceback:\n{item['traceback']}")
