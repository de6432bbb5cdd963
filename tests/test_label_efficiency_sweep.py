"""benchmarks/label_efficiency.py: parallel scheduling (--jobs) and reporting from scores alone.

The trainings are replaced by a fake ``Sweep._call`` that records when each job ran and writes the
files a real run leaves (pretraining checkpoint; fold checkpoint + validation summary)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from test_pretrain import _benchmark_module

from fpnunet.errors import FPNError


class FakeRunner:
    """Stands in for ``Sweep._call``: pretraining takes ``pretrain_s``, a training ``train_s``."""

    def __init__(self, sweep, pretrain_s: float = 0.4, train_s: float = 0.1, fail: str | None = None) -> None:
        self.sweep, self.pretrain_s, self.train_s, self.fail = sweep, pretrain_s, train_s, fail
        self.events: list[tuple[str, str, float, float]] = []  # (kind, log name, start, end)
        self.argvs: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.running = self.most_running = 0

    def __call__(self, module, argv, log_name, results=None):
        self.argvs[log_name] = list(argv)
        start = time.perf_counter()
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if module.endswith("commands.pretrain"):
                time.sleep(self.pretrain_s)
                fold = self.sweep.pretrain_dir(argv[argv.index("--network") + 1], argv[argv.index("--target") + 1])
                fold.mkdir(parents=True, exist_ok=True)
                (fold / "checkpoint_final.pth").write_bytes(b"x")
                kind = "pretrain"
            else:
                pretrained = argv[argv.index("--pretrained") + 1]
                assert pretrained == "none" or Path(pretrained).is_file(), \
                    f"{log_name} started before its pretraining checkpoint existed"
                time.sleep(self.train_s)
                if self.fail and self.fail in log_name:
                    raise FPNError(f"{log_name} broke")
                run = next(r for r in self.sweep.runs if log_name == log_name_of(r))
                fold = self.sweep.fold_dir(run)
                (fold / "validation").mkdir(parents=True, exist_ok=True)
                (fold / "checkpoint_final.pth").write_bytes(b"x")
                dice = 0.5 + 0.1 * run.fold + (0.2 if run.method.pretrain else 0.0)
                (fold / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": dice}}))
                kind = "train"
        finally:
            with self.lock:
                self.running -= 1
        self.events.append((kind, log_name, start, time.perf_counter()))


def log_name_of(r) -> str:
    return f"seed{r.seed}__{r.method.key}__{r.method.network}__lf{r.fraction:g}__fold{r.fold}"


def make_sweep(tmp_path, *extra: str):
    le = _benchmark_module()
    args = le.build_parser().parse_args(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                                         "--fractions", "0.05", "0.5", "--folds", "0", "1",
                                         "--networks", "fpn", "lachinov", "--targets", "FAF", *extra])
    return le, le.Sweep(args)


def test_parallel_jobs_overlap_and_fine_tuning_waits_for_pretraining(tmp_path):
    le, sweep = make_sweep(tmp_path, "--jobs", "3")
    fake = FakeRunner(sweep)
    sweep._call = fake
    sweep.run_parallel(3)
    kinds = [e[0] for e in fake.events]
    assert kinds.count("pretrain") == 1 and kinds.count("train") == len(sweep.runs) == 12
    assert fake.most_running == 3  # never more than --jobs, and the pool was used fully
    pretrain_end = next(e[3] for e in fake.events if e[0] == "pretrain")
    ssl = [e for e in fake.events if "ssl-FAF" in e[1]]
    scratch = [e for e in fake.events if "scratch" in e[1]]
    assert len(ssl) == 4 and all(e[2] >= pretrain_end for e in ssl)
    assert any(e[2] < pretrain_end for e in scratch)  # scratch runs did not wait for the pretraining
    table = sweep.report([])
    faf = table[(table["method"] == "FPN + FAF SSL") & (table["fraction"] == 0.05)].iloc[0]
    assert faf["n"] == 2 and faf["mean"] == pytest.approx(75.0)  # folds 0 and 1: 0.7, 0.8

    # a second pass finds everything finished and runs nothing
    again = FakeRunner(sweep)
    sweep._call = again
    sweep.run_parallel(3)
    assert again.events == []


def test_parallel_failures_are_collected_and_the_rest_still_runs(tmp_path):
    le, sweep = make_sweep(tmp_path)
    fake = FakeRunner(sweep, pretrain_s=0.05, train_s=0.02, fail="lachinov__lf0.5__fold1")
    sweep._call = fake
    with pytest.raises(FPNError, match=r"1 of the sweep's jobs failed:\nLachinov et al. 0.5 fold 1: .*broke"):
        sweep.run_parallel(2)
    assert sum(e[0] == "train" for e in fake.events) == 11


def test_report_needs_only_the_scores(tmp_path):
    """Results copied back without checkpoints (e.g. from a GPU machine) are still reported."""
    le, sweep = make_sweep(tmp_path)
    sweep._call = FakeRunner(sweep, pretrain_s=0, train_s=0)
    sweep.run_parallel(4)
    for ckpt in (tmp_path / "work").rglob("checkpoint_final.pth"):
        ckpt.unlink()
    runs = sweep.collect()
    assert len(runs) == 12 and sorted(runs["dice"].round(3).unique()) == [0.5, 0.6, 0.7, 0.8]


def test_jobs_must_be_positive(capsys):
    le = _benchmark_module()
    assert le.main(["--jobs", "0", "--dry-run"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


def test_training_flags_are_passed_to_every_run(tmp_path):
    le, sweep = make_sweep(tmp_path, "--weight-decay", "0.05", "--lr", "0.02")
    fake = FakeRunner(sweep, pretrain_s=0, train_s=0)
    sweep._call = fake
    sweep.run_parallel(2)
    trains = [argv for name, argv in fake.argvs.items() if not name.startswith("pretrain")]
    assert len(trains) == 12
    for argv in trains:
        assert argv[argv.index("--weight-decay") + 1] == "0.05" and argv[argv.index("--lr") + 1] == "0.02"
    pretrain = fake.argvs["pretrain__fpn__FAF"]
    assert "--weight-decay" not in pretrain and "--lr" not in pretrain  # the sweep's fine-tuning flags only
    assert sweep.settings([])["weight_decay"] == 0.05


def test_encoder_ssl_methods_take_the_encoder_of_the_source_pretraining(tmp_path):
    le = _benchmark_module()
    args = le.build_parser().parse_args(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                                         "--fractions", "0.05", "--folds", "0", "--networks", "omnia", "dxnet",
                                         "--pretrain-networks", "omnia", "--encoder-ssl-networks", "dxnet",
                                         "--targets", "FAF"])
    sweep = le.Sweep(args)
    assert [m.label for m in sweep.methods] == ["Omnia-Net", "DX-Net", "Omnia-Net + FAF SSL",
                                                "DX-Net + FAF SSL encoder (Omnia-Net)"]
    fake = FakeRunner(sweep, pretrain_s=0, train_s=0)
    sweep._call = fake
    sweep.run_parallel(2)
    assert [n for n in fake.argvs if n.startswith("pretrain")] == ["pretrain__omnia__FAF"]  # one pretraining
    argv = fake.argvs["seed0__enc-ssl-FAF__dxnet__lf0.05__fold0"]
    source = str(sweep.pretrain_dir("omnia", "FAF") / "checkpoint_final.pth")
    assert argv[argv.index("--encoder-weights") + 1] == source and argv[argv.index("--pretrained") + 1] == "none"
    assert sweep.fold_dir(sweep.runs[-1]).parent.name == "dxnet__lf0.05__enc-ssl-FAF"
    assert le.main(["--networks", "dxnet", "--encoder-ssl-networks", "dxnet", "--dry-run"]) == 2


def test_cmc_report_pairs_shifted_with_aligned_fused_and_cmc_with_its_counterpart(tmp_path):
    """benchmarks/label_efficiency_cmc.py's tables: fused - OCT, shifted - aligned fused (with the count of
    runs within 2 points) and CMC - counterpart, each paired per run."""
    import argparse

    import pandas as pd
    from benchmark_modules import load_benchmark

    cmc = load_benchmark("label_efficiency_cmc")

    m = "FPN + FAF SSL + CMC"
    df = pd.DataFrame([
        {"method": m, "fraction": 0.05, "fold": 0, "seed": 0, "oct": 0.40, "fused+0": 0.50, "fused+8": 0.49},
        {"method": m, "fraction": 0.05, "fold": 1, "seed": 0, "oct": 0.40, "fused+0": 0.50, "fused+8": 0.45},
    ])
    pd.DataFrame([
        {"method": m, "fraction": 0.05, "fold": 0, "seed": 0, "dice": 0.60},
        {"method": m, "fraction": 0.05, "fold": 1, "seed": 0, "dice": 0.50},
        {"method": "FPN + FAF SSL", "fraction": 0.05, "fold": 0, "seed": 0, "dice": 0.50},
        {"method": "FPN + FAF SSL", "fraction": 0.05, "fold": 1, "seed": 0, "dice": 0.54},
    ]).to_csv(tmp_path / "runs.csv", index=False)
    text = cmc.render(df, argparse.Namespace(shifts=[0, 8], tta=False), tmp_path, ["--shifts", "0", "8"])
    assert f"| {m} | 0.05 | 40.00 +- 0.00 (n=2) | 50.00 +- 0.00 (n=2) | 47.00 +- 2.83 (n=2) |" in text
    assert f"| {m} | 0.05 | 10.00 +- 0.00 (n=2) | 7.00 +- 2.83 (n=2) |" in text  # fused - OCT
    assert f"| {m} | 0.05 | -3.00 +- 2.83 (n=2), 1/2 |" in text  # shift 8 - shift 0: one run within 2 points
    assert f"* {m} - FPN + FAF SSL at 0.05: 3.00 +- 9.90 (n=2), wins 1/2" in text
