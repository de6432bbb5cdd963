"""Wall time of ``fpn_X --help`` for every console script, against a bare interpreter start.

::

    python benchmarks/cli_help.py [--rounds 5] [--other-bin /path/to/other/.venv/bin]

Runs, interleaved round by round, ``python -c pass`` and ``fpn_X --help`` of this checkout's
console scripts (and those of ``--other-bin``, e.g. an older checkout's venv, when given), and
prints the median seconds per command and the ratio to the bare interpreter, so a shared machine's
load affects every column alike.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> list[str]:
    return sorted(set(re.findall(r"[\"'](fpn_\w+)\s*=", (ROOT / "setup.py").read_text())))


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--other-bin", type=Path, default=None,
                   help="bin folder of another install to compare with (default: none)")
    args = p.parse_args(argv)
    this_bin = Path(sys.executable).parent
    variants = {"this": this_bin} | ({"other": args.other_bin} if args.other_bin else {})
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        times.setdefault(("python", "-c pass"), []).append(wall([sys.executable, "-c", "pass"]))
        for name in console_scripts():
            for label, folder in variants.items():
                if (folder / name).exists():
                    times.setdefault((label, name), []).append(wall([str(folder / name), "--help"]))
    base = statistics.median(times[("python", "-c pass")])
    print(f"{'variant':<8} {'command':<26} {'median s':>9} {'x python -c pass':>17}")
    for (label, name), values in times.items():
        med = statistics.median(values)
        print(f"{label:<8} {name:<26} {med:9.2f} {med / base:17.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
