"""benchmarks/choice_rules.py and choice_holdout.py's report: the rules on constructed CV figures."""
from __future__ import annotations

import csv

import pytest
from benchmark_modules import load_benchmark


def _rules():
    return load_benchmark("choice_rules")


def _pipe(r, name: str, folds: list[float]):
    import numpy as np

    return r.Pipeline(name, tuple(name.split(" + ")), float(np.mean(folds)), float(np.std(folds, ddof=1)),
                      {str(i): v for i, v in enumerate(folds)})


def test_paired_rule_keeps_an_ensemble_only_when_its_fold_gain_beats_the_spread():
    r = _rules()
    a, b = _pipe(r, "a", [0.6, 0.7, 0.8]), _pipe(r, "b", [0.5, 0.6, 0.7])
    steady = _pipe(r, "a + b", [0.65, 0.75, 0.85])  # +5 points on every fold: spread 0
    assert r.paired([a, b, steady]).name == "a + b"
    noisy = _pipe(r, "a + b", [0.5, 0.95, 0.8])  # +1.7 on average, -10 / +25 / 0 per fold
    assert r.today([a, b, noisy]).name == "a + b"
    assert r.paired([a, b, noisy]).name == "a"


def test_one_se_rules_prefer_the_simplest_pipeline_within_the_noise():
    r = _rules()
    a, b = _pipe(r, "a", [0.2, 0.5, 0.8]), _pipe(r, "b", [0.1, 0.2, 0.3])
    ens = _pipe(r, "a + b", [0.25, 0.55, 0.85])
    assert r.one_se([a, b, ens]).name == "a"  # 5 points below, s.e. of the best 17 points
    assert r.paired_one_se([a, b, ens]).name == "a + b"  # paired: -5 on every fold, s.e. 0
    assert r.best_single([a, b, ens]).name == "a"


def test_verdict_uses_the_paired_standard_error():
    r = _rules()
    assert r.compare({"x": 0.8, "y": 0.6}, {"x": 0.7, "y": 0.7}) == pytest.approx((0.0, 0.1))
    assert r.verdict(-0.05, 0.01) == "worse"
    assert r.verdict(0.05, 0.01) == "better"
    assert r.verdict(0.01, 0.01) == "same within noise"


def test_report_only_checks_the_goal_against_the_best_candidate_and_the_default(tmp_path, capsys):
    m = load_benchmark("choice_holdout")
    rows = []
    test = {"fpn-scratch": 0.7, "fpn-ssl-FAF": 0.6, "fpn-scratch + fpn-ssl-FAF": 0.65}
    cv = {"fpn-scratch": [0.5, 0.6, 0.7], "fpn-ssl-FAF": [0.5, 0.5, 0.5], "fpn-scratch + fpn-ssl-FAF": [0.6, 0.6, 0.8]}
    for name, dice in test.items():
        for i in range(10):
            folds = cv[name]
            rows.append({"dataset": "D1", "pipeline": name, "members": name.replace(" + ", "+"),
                         "cv_dice": sum(folds) / 3, "cv_spread": 0.1, "cv_folds": " ".join(
                             f"{k}:{v}" for k, v in enumerate(folds)), "chosen": int("+" in name),
                         "case": f"C{i:03d}", "test_dice": dice + 0.01 * (i % 2)})
    path = tmp_path / "h.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=m.FIELDS)
        w.writeheader()
        w.writerows(rows)
    assert m.main(["--report-only", str(path)]) == 0
    out = capsys.readouterr().out
    assert "best candidate in hindsight fpn-scratch 70.5 (chosen - best -5.0)" in out
    assert "goal MISSED" in out and "goal met" not in out
    assert "| D1 | all 10 | d-single | fpn-scratch | 70.5 | +0.0 | +5.0 +- 0.0 | better |" in out
