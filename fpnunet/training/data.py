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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from fpnunet.atomic import load_json
from fpnunet.errors import FPNError
from fpnunet.lifeline import die_with_parent

logger = logging.getLogger(__name__)

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
    return data_dir / (f"{case}_seg.npy" if mode == "seg" else f"{case}_{mode}.npy")


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise FPNError(f"{path}: cannot read as a .npy array ({exc})") from None
    return tuple(arr.shape), arr.dtype


def _locations(data_dir: Path, case: str, label_path: Path) -> dict[int, np.ndarray]:
    props = data_dir / f"{case}.json"
    if props.is_file():
        try:
            locs = load_json(props).get("class_locations")
        except (ValueError, UnicodeDecodeError) as exc:
            raise FPNError(f"{props}: not valid JSON ({exc})") from None
        if isinstance(locs, dict):
            out: dict[int, np.ndarray] = {}
            for k, v in locs.items():
                arr = np.asarray(v, dtype=np.int64).reshape(-1, 2) if len(v) else np.zeros((0, 2), np.int64)
                if len(arr):
                    out[int(k)] = arr
            return out
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
        vol = data_dir / f"{case}.npy"
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
            path = data_dir / f"{rec.name}_{mod}.npy"
            if not path.is_file():
                if required:
                    from fpnunet.training.enface_inputs import missing_message

                    raise FPNError(missing_message(path, rec.name, mod, modalities))
                rec.enface.append(None)
                missing += 1
                continue
            shape, _ = _npy_shape(path)
            if shape != rec.shape_ba:
                raise FPNError(f"{path}: shape {shape} does not match the en-face plane {rec.shape_ba} of {rec.name}")
            rec.enface.append(path)
    return missing


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
    ) -> None:
        records = scan_cases(data_dir, list(cases), mode)
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
