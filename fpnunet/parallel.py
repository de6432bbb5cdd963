"""``parallel_map``: run a function over items in a forked process pool, with a tqdm bar.

Used for the per-case work of verification (:mod:`fpnunet.plans.fingerprint`) and preprocessing
(:mod:`fpnunet.preprocessing.storage`).
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(
    func: Callable[[T], R],
    items: Sequence[T],
    num_processes: int = 1,
    show_progress: bool = True,
    desc: str = "",
) -> Iterator[R]:
    """Yield ``func(item)`` for every item, in completion order, with a tqdm bar.

    ``num_processes > 1`` runs a forked process pool (``func`` must be a module-level function
    and the items picklable). The first exception cancels the remaining tasks and is re-raised.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, disable=not show_progress, unit="case", dynamic_ncols=True)
    try:
        if num_processes <= 1 or len(items) <= 1:
            for item in items:
                out = func(item)
                bar.update(1)
                yield out
            return
        ctx = multiprocessing.get_context("fork")
        workers = min(num_processes, len(items))
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending: set[Future] = set()
            it = iter(items)
            try:
                # keep at most 2 tasks per worker in flight so results (arrays) do not pile up
                for item in _take(it, 2 * workers):
                    pending.add(pool.submit(func, item))
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        out = fut.result()
                        bar.update(1)
                        yield out
                    for item in _take(it, len(done)):
                        pending.add(pool.submit(func, item))
            except BaseException:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def _take(it: Iterator[T], n: int) -> Iterable[T]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return
