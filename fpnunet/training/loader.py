"""The training batch stream: :class:`EnfaceDataLoader` + augmentation in background workers.

::

    with make_train_loader(data_dir, cases, config, seed=1234, epoch=e) as loader:
        for batch in iterate_batches(loader, config.training.iterations_per_epoch):
            x = torch.from_numpy(batch["data"])      # (N, C, B_p, D, A_p) float32
            y = torch.from_numpy(batch["target"])    # (N, 1, B_p, A_p) float32
            m = torch.from_numpy(batch["mask"])      # (N, 1, B_p, A_p) float32, 1 = valid pixel

Workers are batchgenerators' ``MultiThreadedAugmenter`` processes (fork); they return numpy
arrays only (convert in the main process). Batch ``i`` of epoch ``e`` depends only on
``(seed, e, i)`` (see :mod:`fpnunet.training.data`), so the stream is the same with any number of
workers, 0 included, and a resumed run that rebuilds the loader for epoch ``e`` gets the same
batches. A worker's exception is logged in the worker with its traceback and re-raised in the
main process (:class:`FPNError` for a missing or corrupt file, else ``RuntimeError`` carrying the
traceback), instead of batchgenerators' bare "background workers are no longer alive".
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from fpnunet import distributed as fdist
from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration
from fpnunet.plans.training_params import AugmentParams
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.training.augment import AUGMENTATIONS, load_margin
from fpnunet.training.data import EnfaceDataLoader, raise_if_error

logger = logging.getLogger(__name__)

ENV_WORKERS = "FPN_N_PROC_DA"
MAX_DEFAULT_WORKERS = 12


def default_num_workers() -> int:
    """``FPN_N_PROC_DA`` if set (0 = in-process), else the usable CPUs minus one (the training
    process), at least 1 and at most 12."""
    env = os.environ.get(ENV_WORKERS)
    if env is not None and env.strip() != "":
        try:
            n = int(env)
        except ValueError:
            raise FPNError(f"{ENV_WORKERS}={env!r}: expected a number of augmentation workers (0 = none)") from None
        if n < 0:
            raise FPNError(f"{ENV_WORKERS}={env!r}: the number of workers cannot be negative")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return int(min(max(1, cpus - 1), MAX_DEFAULT_WORKERS))


def resolve_data_dir(data_dir: str | Path, config: Configuration) -> Path:
    """``data_dir/<data_identifier>`` when ``data_dir`` is the dataset's preprocessed folder, or
    ``data_dir`` itself when it already is the ``<data_identifier>`` folder."""
    data_dir = Path(data_dir)
    sub = data_dir / config.data_identifier
    if sub.is_dir():
        return sub
    if data_dir.name == config.data_identifier or not plans_file(data_dir).is_file():
        return data_dir
    raise FPNError(f"{sub}: data folder of configuration not found (run fpn_plan_and_preprocess)")


class TrainLoader:
    """An iterator of batch dicts over a batchgenerators augmenter; close it (or use ``with``).

    Attributes: ``loader`` (the :class:`EnfaceDataLoader`), ``num_workers``, ``patch_size``,
    ``batch_size``.
    """

    def __init__(self, loader: EnfaceDataLoader, transform: Any, num_workers: int, pin_memory: bool = False) -> None:
        self.loader = loader
        self.num_workers = int(num_workers)
        self.patch_size = loader.patch_size
        self.batch_size = loader.batch_size
        self.pin_memory = bool(pin_memory)
        self._closed = False
        if self.num_workers == 0:
            self._aug: Any = SingleThreadedAugmenter(loader, transform)
        else:
            seeds = [int(np.random.SeedSequence([loader.seed & 0xFFFFFFFF, loader.epoch, w]).generate_state(1)[0])
                     for w in range(self.num_workers)]
            self._aug = MultiThreadedAugmenter(loader, transform, self.num_workers, num_cached_per_queue=2,
                                               seeds=seeds, pin_memory=False)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        try:
            item = next(self._aug)
        except StopIteration:
            self.close()
            raise
        if "error" in item:
            self.close()
            raise_if_error(item)
        if self.pin_memory:
            item = _pin(item)
        return item

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if isinstance(self._aug, MultiThreadedAugmenter):
            self._aug._finish()  # batchgenerators' shutdown: stops, drains and joins the workers

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  interpreter shutdown
            pass


def _pin(item: dict[str, Any]) -> dict[str, Any]:
    """Turn the arrays into pinned torch tensors (CUDA only; unchanged otherwise)."""
    import torch

    if not torch.cuda.is_available():
        return item
    for k in ("data", "target", "mask"):
        item[k] = torch.from_numpy(item[k]).pin_memory()
    return item


def make_train_loader(
    data_dir: str | Path,
    cases: list[str],
    config: Configuration,
    *,
    mode: str = "seg",
    seed: int,
    epoch: int,
    batch_size: int | None = None,
    patch_size: tuple[int, int] | None = None,
    num_workers: int | None = None,
    oversample: float | None = None,
    augment: bool = True,
    invert: bool | None = None,
    params: AugmentParams | None = None,
    num_batches: int | None = None,
    pin_memory: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    enface: list[str] | tuple[str, ...] = (),
    augmentation: str = "default",
    slabs: int | None = None,
) -> TrainLoader:
    """Batches of random en-face patches at full depth from ``cases``, augmented in workers.

    ``data_dir``: the dataset's preprocessed folder (``config.data_identifier`` is appended) or the
    data folder itself. ``mode``: ``"seg"`` or an en-face modality (``"FAF"`` inverted by default,
    ``"SLO"``; ``invert`` overrides). ``batch_size``/``patch_size``/``oversample`` default to the
    configuration (``training.foreground_oversample``). ``num_workers`` defaults to
    :func:`default_num_workers` (0: in-process). ``augment=False`` gives plain random crops.
    ``num_batches``: total length (None: infinite). ``pin_memory``: on CUDA, return pinned torch
    tensors instead of numpy arrays. ``rank``/``world_size``: this process's share of the sequence
    (default: :mod:`fpnunet.distributed`'s, i.e. rank 0 of 1 outside torchrun). ``enface``: en-face
    modalities the network takes as input channels (every case needs ``CASE_<MOD>.npy``): they get
    the volume's spatial augmentation and are packed into ``data`` as ``M`` more channels.
    ``augmentation``: the registered transform (:data:`~fpnunet.training.augment.AUGMENTATIONS`).
    ``slabs``: read ``slabs`` depth-slab means per case instead of the volume (a network that sees
    the volume only through them, :meth:`~fpnunet.networks.registry.SegNetwork.training_slabs`).

    Yields dicts: ``data`` float32 ``(N, C, B_p, D, A_p)``, ``target`` and ``mask`` float32
    ``(N, 1, B_p, A_p)``, ``keys`` (case names), ``batch_index``. The sequence depends only on
    ``(seed, epoch)`` and the arguments, not on ``num_workers``.
    """
    folder = resolve_data_dir(data_dir, config)
    patch = tuple(int(p) for p in (patch_size or config.patch_size))
    n = int(batch_size or config.batch_size)
    over = config.training.foreground_oversample if oversample is None else float(oversample)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers < 0:
        raise FPNError(f"num_workers cannot be negative, got {workers}")
    params = (params or AugmentParams()) if augment else None
    loader = EnfaceDataLoader(
        folder, list(cases), patch, n, mode=mode, invert=invert, oversample_foreground=over,
        margin=load_margin(patch, params), enface=list(enface), seed=seed, epoch=epoch, num_batches=num_batches,
        num_workers=max(1, workers),
        rank=fdist.rank() if rank is None else rank,
        world_size=fdist.world_size() if world_size is None else world_size, slabs=slabs,
    )
    if not slabs and loader.depth != config.depth:
        raise FPNError(f"{loader.records[0].volume}: depth {loader.depth}, but configuration "
                       f"{config.data_identifier!r} of the plan expects {config.depth} (re-run preprocessing)")
    pack = bool(enface)
    transform = AUGMENTATIONS.get(augmentation if augment else "none")(patch, params, mode, pack)
    return TrainLoader(loader, transform, workers, pin_memory=pin_memory)


def iterate_batches(loader: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    """The next ``n`` batches of ``loader`` (fewer if it ends)."""
    for _ in range(int(n)):
        try:
            yield next(loader)
        except StopIteration:
            return
