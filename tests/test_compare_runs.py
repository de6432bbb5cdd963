"""benchmarks/compare_runs.py: runs from a sweep's runs.csv and from a model folder, paired by fold and seed."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from benchmark_modules import load_benchmark


def _module():
    return load_benchmark("compare_runs")


def _fold(model_dir: Path, fold: int, dice: float, seed: int | None) -> None:
    d = model_dir / f"fold_{fold}"
    (d / "validation").mkdir(parents=True)
    (d / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": dice}}))
    seed_args = [] if seed is None else ["--seed", str(seed)]
    (d / "command.txt").write_text(" ".join(["fpn_train", "D", str(fold), "--label-fraction", "0.05", *seed_args])
                                   + "\nfpn_train D 0 --val\n")


def test_compare_csv_against_model_folder(tmp_path, capsys):
    m = _module()
    csv = tmp_path / "runs.csv"
    pd.DataFrame({"method": ["FPN", "FPN", "FPN", "Other"], "network": "fpn", "pretrain": "none",
                  "fraction": 0.05, "fold": [0, 1, 2, 0], "seed": 3, "dice": [0.60, 0.70, 0.80, 0.1]}).to_csv(csv)
    model = tmp_path / "fpn__lf0.05__ssl-FAF"
    _fold(model, 0, 0.75, 3)
    _fold(model, 1, 0.65, 3)
    _fold(model, 2, 0.95, 3)
    _fold(model, 3, 0.99, 3)  # no partner in the csv: counted in the summary, not in the pairs
    (model / "fold_4").mkdir()  # unfinished: ignored

    out = tmp_path / "cmp"
    assert m.main([f"scratch={csv}@FPN", f"faf={model}", "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.loc[runs["method"] == "faf", "fold"]) == [0, 1, 2, 3]
    assert set(runs["seed"]) == {3}
    summary = pd.read_csv(out / "comparison.csv").set_index("method")
    assert summary.loc["scratch", "n"] == 3 and summary.loc["scratch", "mean"] == pytest.approx(70.0)
    assert summary.loc["faf", "n"] == 4 and summary.loc["faf", "mean"] == pytest.approx(83.5)
    paired = pd.read_csv(out / "paired_differences.csv").iloc[0]
    assert paired["reference"] == "scratch" and paired["n"] == 3 and paired["wins"] == 2
    assert paired["mean"] == pytest.approx((15 - 5 + 15) / 3)
    text = (out / "comparison.md").read_text()
    assert "| faf - scratch | 0.05 | +8.3 +- 11.5 | 3 | 2 of 3 |" in text
    assert "compare_runs.py" in text and "| faf - scratch" in capsys.readouterr().out


def test_compare_seed_pairs_and_default_seed(tmp_path):
    m = _module()
    a, b = tmp_path / "a__lf0.1__scratch", tmp_path / "b"
    _fold(a, 0, 0.5, None)  # no --seed: seed 0
    _fold(b, 0, 0.7, 1)  # seed 1: no pair
    runs, summary, paired = m.compare([f"A={a}", f"B={b}"])
    assert list(runs["fraction"]) == [0.1, 1.0]  # from the folder name; none in the name: 1.0
    assert list(runs["seed"]) == [0, 1]
    assert paired["n"].sum() == 0


def test_compare_one_label_from_several_folders(tmp_path):
    m = _module()
    s0, s1, ref = tmp_path / "s0" / "m__lf0.05__x", tmp_path / "s1" / "m__lf0.05__x", tmp_path / "r__lf0.05__y"
    _fold(s0, 0, 0.6, 0)
    _fold(s1, 0, 0.8, 1)
    _fold(ref, 0, 0.5, 0)
    _fold(ref, 1, 0.5, 1)  # fold 1 seed 1: no partner in B
    runs, summary, paired = m.compare([f"A={ref}", f"B={s0}", f"B={s1}"])
    assert list(summary["n"]) == [2, 2]
    assert summary.set_index("method").loc["B", "mean"] == pytest.approx(70.0)
    assert paired.iloc[0]["n"] == 1 and paired.iloc[0]["mean"] == pytest.approx(10.0)


@pytest.mark.parametrize("args, message", [
    (["only=x"], "at least two"),
    (["a", "b=c"], "expected LABEL=SOURCE"),
    (["a={tmp}/nothing", "b={tmp}/nothing"], "no such file or folder"),
    (["a={tmp}/empty", "b={tmp}/empty"], "no finished run in this model folder"),
    (["a={tmp}/bad.csv", "b={tmp}/bad.csv"], "not a label-efficiency runs.csv"),
    (["a={tmp}/runs.csv@Nope", "b={tmp}/runs.csv"], "no run of method 'Nope'"),
    (["a={tmp}/runs.csv", "a={tmp}/runs.csv"], "label 'a' has two runs at fraction 0.05, fold 0, seed 0"),
])
def test_compare_errors(tmp_path, capsys, args, message):
    m = _module()
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    pd.DataFrame({"method": ["FPN"], "fraction": [0.05], "fold": [0], "dice": [0.5]}).to_csv(tmp_path / "runs.csv")
    with pytest.raises(SystemExit) as e:
        m.main([s.format(tmp=tmp_path) for s in args])
    assert e.value.code == 1
    assert message in capsys.readouterr().err
