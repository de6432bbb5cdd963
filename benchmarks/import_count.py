"""How many ``fpnunet`` modules a tiny ``fpn_train`` run imports (the start-up cost of a new layer).

Makes a 6-case synthetic dataset of 8 x 96 x 32 in a temporary folder, plans and preprocesses it,
then runs one training step of fold 0 in a fresh process (:func:`run_modules`, which
tests/test_train_imports.py also runs) and counts ``sys.modules`` entries under ``fpnunet``;
``--list`` prints them, grouped by package. Usage::

    .venv/bin/python benchmarks/import_count.py [--list]

An older tree is measured from an installed copy put first on the path, e.g.
``pip install --no-deps --target /tmp/old /path/to/old/checkout`` then
``PYTHONPATH=/tmp/old .venv/bin/python benchmarks/import_count.py``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

CHILD = """
import sys
try:
    from fpnunet.commands.train import main
except ImportError:  # a tree from before fpnunet/commands/ (round 2)
    from fpnunet.training.train_cli import main
main([{dataset!r}, "0", "--epochs", "1", "--iterations-per-epoch", "1", "--batch-size", "1", "--bn-recalibration",
      "0", "--pretrained", "none", "--no-progress", "--precision", "fp32", "--device", "cpu"])
print("MODULES", " ".join(sorted(m for m in sys.modules if m.startswith("fpnunet"))))
"""


def count(root: Path) -> list[str]:
    env = dict(os.environ, FPN_RAW=str(root / "raw"), FPN_PREPROCESSED=str(root / "pre"),
               FPN_RESULTS=str(root / "results"), FPN_N_PROC_DA="0", OMP_NUM_THREADS="1")
    prep = ("from fpnunet.synthetic.dataset import make_synthetic_dataset\n"
            "try:\n    from fpnunet.commands.plan_and_preprocess import main\n"
            "except ImportError:\n    from fpnunet.preprocessing.cli import main\n"
            f"make_synthetic_dataset({str(root / 'raw' / 'Dataset907_Tiny')!r}, n=6, labelled_fraction=1.0, seed=0, "
            "shape=(8, 96, 32), num_test=0, show_progress=False)\n"
            "main(['-d', '907', '-np', '1', '--no-progress'])\n")
    subprocess.run([sys.executable, "-c", prep], env=env, check=True, capture_output=True)
    return run_modules("907", env)


def run_modules(dataset: str, env: dict[str, str] | None = None) -> list[str]:
    """The ``fpnunet`` modules a one-step supervised ``fpn_train DATASET 0`` imports in a fresh process
    (``env``: the data roots; default this process's environment), sorted."""
    env = dict(os.environ if env is None else env, FPN_N_PROC_DA="0", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", CHILD.format(dataset=dataset)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fpn_train {dataset} 0 failed:\n{done.stderr[-2000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return line.split()[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the modules, grouped by package")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mods = count(Path(tmp))
    groups = Counter(".".join(m.split(".")[:2]) for m in mods)
    print(f"fpnunet modules imported by a tiny fpn_train run: {len(mods)}")
    print("| package | modules |\n|---|---|")
    for name, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {n} |")
    if args.list:
        print("\n".join(mods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
