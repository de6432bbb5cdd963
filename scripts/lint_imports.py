"""Check the import contracts of pyproject.toml (``[tool.importlinter]``) on the installed layout.

``setup.py``'s ``package_dir`` installs the folders ``plans/``, ``preprocessing/`` and ``inference/``
as ``fpnunet.plans``, ``fpnunet.preprocessing`` and ``fpnunet.inference``. import-linter (grimp)
analyses the files under the importable package's own folder, which for an editable install is
``fpnunet/`` alone, so it would not see those three stages. This script copies the sources into a
temporary folder in the installed layout (read from ``setup.py``) and runs ``lint-imports`` there.

Usage: ``python scripts/lint_imports.py`` (exit status 0 when every contract is kept); ``make test``
runs it through tests/test_layers.py.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dir(repo: Path = REPO) -> dict[str, str]:
    """``setup.py``'s ``package_dir`` (package name -> folder), read without running setup.py."""
    tree = ast.parse((repo / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            return ast.literal_eval(node.value)
    raise ValueError(f"{repo / 'setup.py'}: no package_dir keyword")


def stage_installed_layout(dest: Path, repo: Path = REPO) -> Path:
    """Copy the package's ``.py`` files into ``dest`` as they are installed (``dest/fpnunet/plans/...``)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, folder in sorted(package_dir(repo).items()):  # parents before their children
        shutil.copytree(repo / folder, dest / Path(*name.split(".")), ignore=ignore, dirs_exist_ok=True)
    return dest


def lint_imports(stage: Path, config: Path = REPO / "pyproject.toml") -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` (next to this Python) on the staged package; output captured."""
    exe = Path(sys.executable).parent / "lint-imports"
    command = [str(exe) if exe.exists() else "lint-imports", str(config.resolve()), "--no-cache"]
    # lint-imports puts its working folder first on sys.path, so `fpnunet` is the staged copy
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, cwd=stage, env=env, capture_output=True, text=True, check=False)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fpn_lint_imports_") as tmp:
        result = lint_imports(stage_installed_layout(Path(tmp)))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
