"""What the fpn_import tests share: running the import and reading its report."""
from __future__ import annotations

import csv
from pathlib import Path

from fpnunet.importer.cli import import_exports as main


def run(tmp: Path, inp: Path, *extra: str, name: str = "Dataset950_Imp") -> Path:
    out = tmp / "raw" / name
    assert main(["-i", str(inp), "-o", str(out), "--key", str(tmp / "secret" / "import.key"), "--no-progress",
                 *extra]) == 0
    return out


def report(out: Path) -> list[dict[str, str]]:
    with open(out / "import_report.csv", newline="") as f:
        return list(csv.DictReader(f))
