"""Shared pytest fixtures.

``data_roots``: empty ``FPN_RAW`` / ``FPN_PREPROCESSED`` / ``FPN_RESULTS`` under ``tmp_path``.
``tiny_raw_dataset``: a tiny synthetic raw dataset (session-scoped, treat it as read-only; copy
it with ``shutil.copytree`` before changing anything).
``_quick_progress_png`` (autouse): ``progress.png`` is a stand-in unless a test is marked ``real_plots``.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# ---------------------------------------------------------------- machine-independent outcomes
# Every choice the tool makes from the machine it runs on is pinned here, before anything is
# imported, for this process and the commands the tests run in subprocesses, so that no test's
# outcome depends on the CPU, the number of cores, the home folder's caches or an earlier run:
# * --precision auto on the CPU: FPN_CPU_BF16=0 (fp32) unless the caller set it; run the suite
#   with FPN_CPU_BF16=1 to take the bf16 path everywhere (`make test-bf16`). Tests that compare
#   numbers run in a stated precision (tests/precision_cases.py).
# * the bf16 probe's cache and any other cache under XDG_CACHE_HOME: a fresh folder per session.
# * intra-op threads: 1 (OMP_NUM_THREADS for subprocesses, set_num_threads here); augmentation
#   workers: FPN_N_PROC_DA=1 unless set (the default is the machine's cores minus one).
os.environ.setdefault("FPN_CPU_BF16", "0")
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="fpnunet-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FPN_N_PROC_DA", "1")

try:  # the test machine is small and shared: one intra-op thread keeps torch tests predictable
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency, but conftest must not need it
    pass

from fpnunet.synthetic.dataset import make_synthetic_dataset  # noqa: E402  (after the environment is pinned)

TINY_SHAPE: tuple[int, int, int] = (8, 96, 32)
"""``(B, D, A)`` of the tiny dataset's volumes: B-scans, depth, A-scans."""
TINY_TRAIN, TINY_LABELLED, TINY_TEST = 8, 6, 2

ONE_PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
    "0000000a49444154789c636000000002000148afa4710000000049454e44ae426082")
"""A valid 1 x 1 grey PNG (what Pillow writes for ``Image.new("L", (1, 1))``)."""


@pytest.fixture(autouse=True)
def _quick_progress_png(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training draws ``progress.png`` with matplotlib after every epoch (about a second on a CI core,
    more than the tiny epochs themselves): in-process runs here get a stand-in that checks what it is
    given and writes a 1-pixel PNG. Tests marked ``real_plots`` (those that look at the picture) and
    every training in a subprocess draw the real one."""
    if request.node.get_closest_marker("real_plots"):
        return
    from fpnunet.training import logger

    def stand_in(df, metric_columns, path, title: str = "", final=None) -> None:
        assert list(df.columns[:2]) == ["epoch", "train_loss"] and set(metric_columns) <= set(df.columns), df.columns
        assert title and Path(path).suffix == ".png", (title, path)
        Path(path).write_bytes(ONE_PIXEL_PNG)

    monkeypatch.setattr(logger, "draw_progress", stand_in)


@pytest.fixture
def data_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """``(raw, preprocessed)``: ``FPN_RAW`` (created) and ``FPN_PREPROCESSED`` (not yet) under
    ``tmp_path``, ``FPN_RESULTS`` beside them."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    monkeypatch.setenv("FPN_RAW", str(raw))
    monkeypatch.setenv("FPN_PREPROCESSED", str(pre))
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "results"))
    return raw, pre


@pytest.fixture(scope="session")
def tiny_raw_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw dataset folder ``.../Dataset900_SynthGA`` in the layout of ``docs/layout.md``.

    8 training cases ``SynthGA_000`` ... ``SynthGA_007`` (the first 6 labelled, the last 2
    unlabelled), each with ``imagesTr/CASE_0000.nii.gz`` (float32, numpy ``(8, 96, 32)`` =
    ``(B, D, A)``), ``enfaceTr/CASE_FAF.nii.gz`` and ``CASE_SLO.nii.gz`` (float32 ``(8, 32)``),
    ``labelsTr/CASE.nii.gz`` (uint8 ``(8, 32)``); 2 test cases ``SynthGA_T000``, ``SynthGA_T001``
    in ``imagesTs/`` with references in ``labelsTs/``. Seed 0.
    """
    out = tmp_path_factory.mktemp("raw") / "Dataset900_SynthGA"
    return make_synthetic_dataset(out, n=TINY_TRAIN, labelled_fraction=TINY_LABELLED / TINY_TRAIN, seed=0,
                                  shape=TINY_SHAPE, num_test=TINY_TEST, show_progress=False)
