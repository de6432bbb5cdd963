"""``import_report.csv``: one row per imported scan (and per file that was skipped)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from fpnunet.atomic import atomic_path

COLUMNS = ["case", "source", "format", "reader", "split", "shape_bda", "spacing_bda_mm", "bscan_distance_from",
           "laterality", "mirrored", "visit_date", "slo", "slo_from", "label", "notes"]


def read_report(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_report(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` atomically; columns: :data:`COLUMNS`, then any others (en-face registration)."""
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + extra, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in COLUMNS + extra})
    with atomic_path(path, suffix=".csv") as tmp:
        Path(tmp).write_text(buf.getvalue())


def report_file(dataset: Path) -> Path:
    """``DATASET/import_report.csv``."""
    return dataset / "import_report.csv"
