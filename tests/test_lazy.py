"""fpnunet.lazy: the lazy re-exports of the package ``__init__``s."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from fpnunet.lazy import lazy_exports


def test_a_lazy_name_is_imported_on_first_use_and_cached(monkeypatch):
    pkg = types.ModuleType("fake_pkg")
    monkeypatch.setitem(sys.modules, "fake_pkg", pkg)
    pkg.__getattr__, pkg.__dir__ = lazy_exports("fake_pkg", {"dedent": "textwrap"})
    import textwrap

    assert "dedent" not in vars(pkg)
    assert pkg.dedent is textwrap.dedent and vars(pkg)["dedent"] is textwrap.dedent  # cached after first use
    assert "dedent" in pkg.__dir__()
    with pytest.raises(AttributeError, match="module 'fake_pkg' has no attribute 'fill'"):
        _ = pkg.fill


def test_the_packages_import_nothing_heavy_until_a_name_is_used():
    code = ("import sys, fpnunet.inference, fpnunet.evaluation, fpnunet.synthetic, fpnunet.preprocessing\n"
            "heavy = [m for m in ('torch', 'numpy', 'scipy') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert 'Predictor' in dir(fpnunet.inference) and 'dice' in dir(fpnunet.evaluation)\n"
            "from fpnunet.evaluation import dice\n"
            "assert dice.__module__ == 'fpnunet.evaluation.metrics' and 'numpy' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
