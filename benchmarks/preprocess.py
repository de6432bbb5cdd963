"""Benchmark verification + preprocessing: cases per second with 1 and 2 worker processes.

Makes (once; reused from the cache folder afterwards) a synthetic dataset of Spectralis-sized
volumes, 49 x 496 x 512 (B x D x A) float32 ``.nii.gz`` with FAF and SLO en-face images, then
times ``verify_and_fingerprint`` and ``preprocess_dataset`` (``clean=True``, depth crop to 1.2 x
the p95 retina band, resampled to 128 rows) per worker count::

    python benchmarks/preprocess.py                         # 8 cases, workers 1 and 2
    python benchmarks/preprocess.py --cases 4 --shape 16 248 128 --workers 1   # quick

Wall time is what a user waits for; on a shared machine it also counts time spent waiting for
a core, so the table prints the process CPU time of the main process too (the workers' CPU
time is not in it when workers > 1).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from fpnunet.errors import FPNError
from fpnunet.raw_dataset import read_dataset_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=(49, 496, 512), metavar=("B", "D", "A"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--depth", type=int, default=128, help="target depth after cropping")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per setting (median)")
    p.add_argument("--cache-dir", default=os.environ.get("FPN_BENCH_CACHE", "fpn_data/benchmarks"),
                   help="where the synthetic dataset is kept between runs")
    args = p.parse_args()

    cache = Path(args.cache_dir).absolute()
    b, d, a = args.shape
    name = f"Dataset990_BenchPre{b}x{d}x{a}n{args.cases}"
    raw_root = cache / "raw"
    os.environ["FPN_RAW"] = str(raw_root)
    pre_root = Path(tempfile.mkdtemp(prefix="fpn_bench_pre_"))
    os.environ["FPN_PREPROCESSED"] = str(pre_root)

    from fpnunet.plans.fingerprint import verify_and_fingerprint
    from fpnunet.plans.plan import Configuration, Plan
    from fpnunet.preprocessing.storage import preprocess_dataset

    ds = raw_root / name
    if not _cached(ds):
        from fpnunet.synthetic.dataset import make_synthetic_dataset

        t0 = time.perf_counter()
        make_synthetic_dataset(ds, n=args.cases, labelled_fraction=0.5, seed=0, shape=(b, d, a), num_test=0)
        print(f"made {ds} in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"reusing {ds}")
    size_mb = sum(f.stat().st_size for f in ds.rglob("*") if f.is_file()) / 2**20
    print(f"{args.cases} cases of {b} x {d} x {a} (B x D x A), {size_mb:.0f} MB on disk; {os.cpu_count()} CPUs")

    rows = []
    fp = None
    for w in args.workers:
        wall, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fp = verify_and_fingerprint(ds, num_processes=w, show_progress=False)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        rows.append(("verify+fingerprint", w, statistics.median(wall), statistics.median(cpu)))
    assert fp is not None
    crop = min(int(round(1.2 * fp["retina_band_height_p95"])), d)
    plan = Plan(
        dataset_name=name, projection_axis=fp["projection_axis"], labels=fp["labels"],
        enface_modalities=fp["enface_modalities"], depth_crop=crop,
        configurations={"fpn": Configuration(depth=args.depth, data_identifier=f"depth{args.depth}")},
    )
    for w in args.workers:
        wall, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            s = preprocess_dataset(name, plan, num_processes=w, clean=True, show_progress=False, fingerprint=fp)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert s[f"depth{args.depth}"]["written"] == args.cases
        rows.append((f"preprocess (crop {crop} -> {args.depth})", w, statistics.median(wall), statistics.median(cpu)))

    print()
    print(f"{'stage':<32} {'workers':>7} {'wall s':>8} {'cases/s':>8} {'main CPU s':>10}")
    for stage, w, wall_s, cpu_s in rows:
        print(f"{stage:<32} {w:>7} {wall_s:>8.2f} {args.cases / wall_s:>8.2f} {cpu_s:>10.2f}")
    import shutil

    shutil.rmtree(pre_root, ignore_errors=True)


def _cached(ds: Path) -> bool:
    try:
        return bool(read_dataset_json(ds).get("synthetic", {}).get("complete"))
    except FPNError:  # missing or unreadable: make it again
        return False


if __name__ == "__main__":
    main()
