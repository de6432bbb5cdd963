"""nnU-Net v2 2D beside fpnunet's rows in the label-efficiency reports (--nnunet-bin), without nnU-Net:
the merge of nnunet_projection's runs.csv into the report (rows present, labelled with the trainer, means
and paired differences right; --report-only picks them up), no change without it, and the flag's checks."""
from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest
from benchmark_modules import load_benchmark
from test_label_efficiency_sweep import FakeRunner, make_sweep

PROJ = "nnU-Net v2 2D, mean projection (nnUNetTrainer_5epochs)"
ENFACE = "nnU-Net v2 2D, projection + FAF/SLO (nnUNetTrainer_5epochs)"


def write_nnunet_runs(out) -> None:
    """An ``out/nnunet/runs.csv`` as benchmarks/nnunet_projection.py writes it: both variants at the sweep's
    fractions (0.05, 0.5) and folds (0, 1), plus runs the sweep does not have (fraction 0.2, fold 3)."""
    labels = load_benchmark("nnunet_projection").LABELS
    rows = []
    for variant, base in (("proj+enface", 0.9), ("proj", 0.3)):
        for fraction in (0.05, 0.2, 0.5):
            for fold in (0, 1, 3):
                rows.append({"variant": variant, "method": labels[variant], "fraction": fraction, "fold": fold,
                             "dice": base + 0.02 * fold + (0.05 if fraction == 0.5 else 0.0),
                             "trainer": "nnUNetTrainer_5epochs", "seconds": 12.5})
    (out / "nnunet").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(out / "nnunet" / "runs.csv", index=False)


def test_nnunet_rows_sit_beside_fpnunets_in_every_part_of_the_report(tmp_path):
    le, sweep = make_sweep(tmp_path)
    sweep._call = FakeRunner(sweep, pretrain_s=0, train_s=0)
    sweep.run_parallel(2)
    sweep.report(["--folds", "0", "1"])
    out = tmp_path / "out"
    before = (out / "label_efficiency.md").read_text()
    assert "nnU-Net" not in before and "nnunet" not in json.loads((out / "settings.json").read_text())
    assert len(pd.read_csv(out / "label_efficiency.csv")) == 3 * 2  # 3 fpnunet rows x 2 fractions

    write_nnunet_runs(out)
    # --report-only picks up the nnU-Net runs already measured (no --nnunet-bin needed to report them)
    assert le.main(["--report-only", "--work", str(tmp_path / "work"), "--out", str(out), "--fractions", "0.05",
                    "0.5", "--folds", "0", "1", "--networks", "fpn", "lachinov", "--targets", "FAF"]) == 0
    table = pd.read_csv(out / "label_efficiency.csv")
    assert list(table["method"].unique()) == ["FPN", "Lachinov et al.", "FPN + FAF SSL", PROJ, ENFACE]
    row = table[(table["method"] == ENFACE) & (table["fraction"] == 0.5)].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(96.0)  # folds 0, 1: 0.95, 0.97 (fold 3 left out)
    assert table[(table["method"] == PROJ) & (table["fraction"] == 0.05)].iloc[0]["mean"] == pytest.approx(31.0)

    runs = pd.read_csv(out / "runs.csv")
    nn = runs[runs["network"] == "nnunet-2d"]
    assert len(nn) == 2 * 2 * 2 and set(nn["trainer"]) == {"nnUNetTrainer_5epochs"}
    assert sorted(nn["fraction"].unique()) == [0.05, 0.5] and sorted(nn["fold"].unique()) == [0, 1]
    assert set(nn["seed"]) == {0} and len(runs) == 12 + 8

    # paired with FPN from scratch on the same fold: FPN scored 0.5 (fold 0), 0.6 (fold 1); nnU-Net 0.9, 0.92
    paired = pd.read_csv(out / "paired_differences.csv")
    d = paired[(paired["method"] == ENFACE) & (paired["fraction"] == 0.05)].iloc[0]
    assert d["reference"] == "FPN" and d["n"] == 2 and d["wins"] == 2 and d["mean"] == pytest.approx(36.0)

    md = (out / "label_efficiency.md").read_text()
    assert f"| {ENFACE} | **91.00 +- 1.41** | **96.00 +- 1.41** |" in md
    assert f"| {PROJ} | 31.00 +- 1.41 | 36.00 +- 1.41 |" in md
    assert "nnUNetTrainer_5epochs, one run per fold" in md  # the settings name nnU-Net's trainer
    settings = json.loads((out / "settings.json").read_text())
    assert "nnUNetTrainer_5epochs" in settings["nnunet"]
    assert (out / "label_efficiency.png").is_file()

    # the fpnunet rows of the table are those of the report without nnU-Net (bold aside)
    for method in ("FPN", "Lachinov et al."):
        line = next(x for x in before.splitlines() if x.startswith(f"| {method} |"))
        assert line.replace("**", "") in md.replace("**", "")


def test_only_the_chosen_variants_are_reported(tmp_path):
    write_nnunet_runs(tmp_path)
    nn = load_benchmark("label_efficiency_nnunet")
    rows = nn.nnunet_runs(tmp_path, [0.2], [3], seed=1, variants=["proj"])
    assert list(rows["method"]) == [PROJ] and rows.iloc[0]["dice"] == pytest.approx(0.36)
    assert rows.iloc[0]["seed"] == 1
    assert nn.nnunet_runs(tmp_path / "elsewhere", [0.2], [3], seed=0).empty  # no runs.csv: no rows


@pytest.mark.parametrize("make, message", [
    (lambda bin_dir: None, "no such folder"),
    (lambda bin_dir: (bin_dir.mkdir(), (bin_dir / "nnUNetv2_train").write_text("")),
     "nnUNetv2_plan_and_preprocess not in it"),
])
def test_a_bad_nnunet_bin_is_one_line_before_anything_runs(tmp_path, capsys, make, message):
    le = load_benchmark("label_efficiency")
    bin_dir = tmp_path / "bin"
    make(bin_dir)
    argv = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--nnunet-bin", str(bin_dir)]
    assert le.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --nnunet-bin {bin_dir}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
    cmc = load_benchmark("label_efficiency_cmc")
    assert cmc.main(argv) == 2 and message in capsys.readouterr().err


def test_dry_run_lists_nnunet_after_the_sweep(tmp_path, capsys):
    le = load_benchmark("label_efficiency")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train"):
        (bin_dir / name).write_text("")
    assert le.main(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--dry-run", "--device", "cpu",
                    "--fractions", "0.05", "1", "--folds", "0", "2", "--nnunet-bin", str(bin_dir),
                    "--nnunet-trainer", "nnUNetTrainer_1epoch", "--nnunet-variants", "proj+enface"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "nnunet_projection.py" in x)
    assert "--folds 0 2 --fractions 0.05 1 --variants proj+enface --trainer nnUNetTrainer_1epoch" in line
    assert f"--out {tmp_path / 'out' / 'nnunet'}" in line and "--device cpu" in line
    assert not (tmp_path / "out").exists()


def test_cmc_report_shows_nnunet_and_the_fused_difference_to_it(tmp_path):
    cmc = load_benchmark("label_efficiency_cmc")
    nn = load_benchmark("label_efficiency_nnunet")
    write_nnunet_runs(tmp_path)
    m = "FPN + FAF SSL + CMC"
    df = pd.DataFrame([{"method": m, "fraction": 0.05, "fold": k, "seed": 0, "oct": 0.4, "fused+0": 0.95}
                       for k in (0, 1)])
    text = cmc.render(df, argparse.Namespace(shifts=[0], tta=False), tmp_path, [],
                      nn.nnunet_runs(tmp_path, [0.05], [0, 1], seed=0))
    assert f"| {ENFACE} | 0.05 | 91.00 +- 1.41 (n=2) |" in text
    assert f"* {m} - {ENFACE} at 0.05: 4.00 +- 1.41 (n=2), wins 2/2" in text
    assert "nnU-Net" not in cmc.render(df, argparse.Namespace(shifts=[0], tta=False), tmp_path, [])
