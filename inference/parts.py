"""Prediction split into parts: ``fpn_predict --num-parts K --part-id I``, ``--devices``, ``--merge-parts``.

* :func:`select_part`: part ``I`` of ``K`` takes the cases at positions ``I, I + K, I + 2K, ...`` of
  the input folder's cases sorted by name, so the parts are disjoint, cover every case, and do not
  depend on where or when they run (Slurm array tasks, several nodes).
* Each part writes its masks (and ``.npz``) into the output folder as one run would, and its lesion
  areas into ``lesion_areas.part-I-of-K.csv`` instead of ``lesion_areas.csv`` (and its failed
  inputs, if any, into ``failed_cases.part-I-of-K.csv``), so parts never overwrite each other's
  tables (names: :class:`fpnunet.prediction_folder.PredictionFolder`).
* Each part records the case list it was given, and every input case, in ``cases.part-I-of-K.json``.
* :func:`merge_parts` (``fpn_predict -o OUT --merge-parts``) checks that all ``K`` part tables are
  there and that together they cover the inputs exactly (:func:`check_coverage`: same inputs, no
  gap, no overlap, no row twice or of another part's case), joins them in case order into
  ``lesion_areas.csv`` (the file one run writes), joins the failed-case part tables into
  ``failed_cases.csv`` and removes the part tables and case lists.
* :func:`run_on_devices` (``fpn_predict ... --devices cuda:0 cuda:1``): one process per device, each
  a part, their output streamed with a ``[part I @ DEVICE]`` prefix, then the merge.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError
from fpnunet.prediction_folder import AREAS_FILE, FAILED_FILE, PredictionFolder

T = TypeVar("T")


def check_part(num_parts: int, part_id: int) -> None:
    if num_parts < 1:
        raise FPNError(f"--num-parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise FPNError(f"--part-id {part_id}: must be in 0..{num_parts - 1} for --num-parts {num_parts}")


def select_part(items: Sequence[T], num_parts: int, part_id: int) -> list[T]:
    """Items ``part_id, part_id + num_parts, ...`` of ``items`` (already in a fixed order)."""
    check_part(num_parts, part_id)
    return list(items[part_id::num_parts])


def merge_parts(out_dir: str | Path, keep: bool = False) -> Path:
    """Join ``out_dir``'s part tables into ``lesion_areas.csv`` (rows in case order, as one run
    writes them); removes the part tables and case lists unless ``keep``. Missing parts, parts made
    from different inputs, gaps, overlaps and rows of cases a part was not given are errors
    (:func:`check_coverage`); nothing is written then. Holds the folder's writer lock."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FPNError(f"{out_dir}: output folder not found")
    with PredictionFolder(out_dir).writer_lock():
        return _merge(PredictionFolder(out_dir), keep)


def _merge(folder: PredictionFolder, keep: bool) -> Path:
    import pandas as pd

    out_dir = folder.folder
    parts = folder.part_tables(AREAS_FILE)
    if not parts:
        raise FPNError(f"{out_dir}: no part tables lesion_areas.part-I-of-K.csv to merge "
                       "(written by fpn_predict --num-parts K --part-id I)")
    if len(parts) > 1:
        raise FPNError(f"{out_dir}: part tables of several splits ({', '.join(f'K={k}' for k in sorted(parts))}); "
                       "remove the stale ones")
    (k, found), = parts.items()
    missing = [i for i in range(k) if i not in found]
    if missing:
        raise FPNError(f"{out_dir}: part(s) {', '.join(map(str, missing))} of {k} have no lesion_areas table yet "
                       f"(run fpn_predict --num-parts {k} --part-id {missing[0]}, then merge again)")
    frames = []
    for i in range(k):
        try:
            frames.append(pd.read_csv(found[i], dtype={"case": str, "class": str}, keep_default_na=False))
        except (OSError, ValueError) as exc:
            raise FPNError(f"{found[i]}: not a readable lesion_areas table ({exc})") from None
    failed_parts = folder.part_tables(FAILED_FILE).get(k, {})
    failed = [PredictionFolder.read_failed_table(failed_parts[i]) if i in failed_parts else {} for i in range(k)]
    check_coverage(folder, k, [list(zip(f.get("case", []), f.get("class", []))) for f in frames], failed)
    rows = [f for f in frames if len(f)]  # a part without cases has only the header
    target = folder.areas_file()
    if rows:  # no lesion table at all when no case was predicted, as for one run
        table = pd.concat(rows, ignore_index=True).sort_values("case", kind="mergesort", ignore_index=True)
        write_atomic(target, lambda tmp: table.to_csv(tmp, index=False), suffix=".csv")  # stable: class order kept
    folder.write_failed({c: e for part in failed for c, e in part.items()})
    if not keep:
        for p in [*found.values(), *failed_parts.values(), *(folder.part_cases_file(i, k) for i in range(k))]:
            p.unlink(missing_ok=True)
    return target


def check_coverage(folder: PredictionFolder, k: int, rows: Sequence[Sequence[tuple[str, str]]],
                   failed: Sequence[dict[str, str]]) -> None:
    """The ``k`` parts together predicted every input case exactly once: they saw the same inputs,
    their case lists neither overlap nor leave a case out, and each part's table (``rows``:
    ``(case, class)`` per part) and failed cases name only its own cases, each once."""
    lists = [folder.read_part_cases(i, k) for i in range(k)]
    inputs = lists[0][0]
    for i, (seen, _) in enumerate(lists[1:], 1):
        if seen != inputs:
            raise FPNError(f"{folder.part_cases_file(i, k)}: part {i} of {k} saw {len(seen)} input case(s), part 0 "
                           f"saw {len(inputs)} (the input folder changed between the parts); rerun every part")
    owner: dict[str, int] = {}
    for i, (_, cases) in enumerate(lists):
        for c in cases:
            if c in owner:
                raise FPNError(f"{folder.part_cases_file(i, k)}: case {c} is also in part {owner[c]}: the parts "
                               f"overlap; rerun every part with the same --num-parts {k}")
            owner[c] = i
    gaps = sorted(set(inputs) - set(owner))
    if gaps or set(owner) - set(inputs):
        raise FPNError(f"{folder.folder}: the parts' case lists do not cover the inputs ({len(gaps)} case(s) never "
                       f"predicted, e.g. {(gaps or sorted(set(owner) - set(inputs)))[0]}); rerun every part")
    for i, (part_rows, part_failed) in enumerate(zip(rows, failed, strict=True)):
        table = folder.areas_file(i, k)
        own = set(lists[i][1])
        stray = sorted({c for c, _ in part_rows if c not in own} | (set(part_failed) - own))
        if stray:
            raise FPNError(f"{table}: case {stray[0]} is not one of part {i}'s cases; rerun part {i}")
        seen_rows: set[tuple[str, str]] = set()
        for row in part_rows:
            if row in seen_rows:
                raise FPNError(f"{table}: case {row[0]} class {row[1]} appears twice; rerun part {i}")
            seen_rows.add(row)
        absent = sorted(own - {c for c, _ in part_rows} - set(part_failed))
        if absent:
            raise FPNError(f"{table}: case {absent[0]} of part {i} has neither a row nor a failed-case entry "
                           f"({len(absent)} such case(s)); rerun part {i}")


def strip_devices(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--devices D1 D2 ...`` (``fpn_predict``'s own arguments for each part)."""
    out: list[str] = []
    skipping = False
    for item in argv:
        if item == "--devices":
            skipping = True
            continue
        if skipping and not item.startswith("-"):
            continue
        skipping = False
        out.append(item)
    return out


def part_commands(argv: Sequence[str], devices: Sequence[str]) -> list[list[str]]:
    """The ``fpn_predict`` command of each part when ``argv`` says ``--devices ...``."""
    base = strip_devices(argv)
    k = len(devices)
    return [[sys.executable, "-m", "fpnunet.commands.predict", *base, "--num-parts", str(k), "--part-id", str(i),
             "--device", device] for i, device in enumerate(devices)]


def run_on_devices(argv: Sequence[str], devices: Sequence[str], out_dir: Path) -> int:
    """Predict with one part per device in parallel, then merge the lesion-area tables; returns the
    exit status (1 when a part failed: its masks are written, the table is not merged)."""
    env = dict(os.environ)
    cpu = sum(d == "cpu" for d in devices)
    if cpu and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu))
    lock = threading.Lock()
    procs = []
    threads = []
    for i, (device, command) in enumerate(zip(devices, part_commands(argv, devices), strict=True)):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
        procs.append(proc)
        thread = threading.Thread(target=_stream, args=(proc, f"[part {i} @ {device}]", lock), daemon=True)
        thread.start()
        threads.append(thread)
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
    for thread in threads:
        thread.join(timeout=5)
    failed = [str(i) for i, c in enumerate(codes) if c != 0]
    if failed:
        print(f"error: part(s) {' '.join(failed)} of {len(devices)} failed (see their messages above); "
              f"after fixing, rerun them with --num-parts {len(devices)} --part-id I and merge with "
              f"fpn_predict -o {out_dir} --merge-parts", file=sys.stderr)
        return 1
    path = merge_parts(out_dir)
    print(f"fpn_predict: {len(devices)} parts merged into {path}", file=sys.stderr)
    return 0


def _stream(proc: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and "\r" not in line:  # progress bars redraw with \r: keep the finished lines only
            with lock:
                print(f"{prefix} {line}", file=sys.stderr, flush=True)
