"""Cross-validation splits, user splits files and label fractions (fpnunet.training.splits)."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from fpnunet.errors import FPNError
from fpnunet.training.splits import (
    SPLITS_FILE,
    apply_label_fraction,
    fold_cases,
    load_or_create_splits,
    make_splits,
)

CASES = [f"case_{i:03d}" for i in range(23)]
# 9 patients with 1 to 4 cases each
PATIENTS = {c: f"p{(i * 7) % 9}" for i, c in enumerate(CASES)}


def test_splits_seeded_and_cover_every_case_once() -> None:
    a = make_splits(CASES, None, n_folds=5, seed=12345)
    b = make_splits(list(reversed(CASES)), None, n_folds=5, seed=12345)
    c = make_splits(CASES, None, n_folds=5, seed=7)
    assert a == b  # depends on the set of cases and the seed, not on the order given
    assert a != c
    assert len(a) == 5
    vals = [case for fold in a for case in fold["val"]]
    assert sorted(vals) == sorted(CASES)  # every labelled case validated exactly once
    for fold in a:
        assert sorted(fold["train"] + fold["val"]) == sorted(CASES)
        assert not set(fold["train"]) & set(fold["val"])
    sizes = [len(f["val"]) for f in a]
    assert max(sizes) - min(sizes) <= 1


def test_splits_grouped_by_patient() -> None:
    splits = make_splits(CASES, PATIENTS, n_folds=5, seed=3)
    assert sorted(c for f in splits for c in f["val"]) == sorted(CASES)
    for fold in splits:
        train_p = {PATIENTS[c] for c in fold["train"]}
        val_p = {PATIENTS[c] for c in fold["val"]}
        assert not train_p & val_p, "a patient is on both sides of a fold"
        assert fold["val"]
    # cases missing from the mapping are their own group
    partial = {c: p for c, p in PATIENTS.items() if c != CASES[0]}
    splits = make_splits(CASES, partial, n_folds=5, seed=3)
    assert sorted(c for f in splits for c in f["val"]) == sorted(CASES)


def test_few_cases_reduce_folds_or_fail(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        splits = make_splits(["a", "b", "c"], None, n_folds=5)
    assert len(splits) == 3 and "3 folds" in caplog.text
    assert sorted(len(f["val"]) for f in splits) == [1, 1, 1]
    # two patients only: two folds
    splits = make_splits(["a", "b", "c"], {"a": "x", "b": "x", "c": "y"}, n_folds=5)
    assert len(splits) == 2
    with pytest.raises(FPNError, match="at least 2"):
        make_splits(["a"], None)
    with pytest.raises(FPNError, match="at least 2 patients"):
        make_splits(["a", "b"], {"a": "x", "b": "x"})


def test_load_or_create_writes_then_reuses(tmp_path) -> None:
    pre, raw = tmp_path / "pre", tmp_path / "raw"
    pre.mkdir(), raw.mkdir()
    splits = load_or_create_splits(pre, raw, CASES, PATIENTS)
    written = json.loads((pre / SPLITS_FILE).read_text())
    assert written == splits == make_splits(CASES, PATIENTS)
    assert not list(pre.glob(".*"))  # no temporary left behind (atomic write)
    # an existing preprocessed file is reused as is
    custom = [{"train": CASES[:20], "val": CASES[20:]}]
    (pre / SPLITS_FILE).write_text(json.dumps(custom))
    assert load_or_create_splits(pre, raw, CASES, PATIENTS) == custom


def test_user_splits_win_and_are_validated(tmp_path) -> None:
    pre, raw = tmp_path / "pre", tmp_path / "raw"
    pre.mkdir(), raw.mkdir()
    load_or_create_splits(pre, raw, CASES, None)
    user = [{"train": CASES[2:], "val": CASES[:2]}, {"train": CASES[:2], "val": CASES[2:4]}]
    path = raw / SPLITS_FILE
    path.write_text(json.dumps(user))
    assert load_or_create_splits(pre, raw, CASES, None) == user

    def bad(obj: object, *match: str, all_cases: list[str] | None = None) -> None:
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        with pytest.raises(FPNError) as info:
            load_or_create_splits(pre, raw, CASES, None, all_cases=all_cases)
        assert str(path) in str(info.value)
        for m in match:
            assert m in str(info.value)

    bad([{"train": CASES[1:], "val": ["nobody"]}], "'nobody'", "no such case", all_cases=CASES + ["unl"])
    bad([{"train": CASES[1:] + ["unl"], "val": CASES[:1]}], "'unl'", "no label", all_cases=CASES + ["unl"])
    bad([{"train": CASES, "val": CASES[:1]}], CASES[0], "both")
    bad({"train": CASES}, "list")
    bad([{"train": CASES}], "fold 0")
    bad("[{", "JSON")


def test_fold_cases() -> None:
    splits = make_splits(CASES, None)
    tr, va = fold_cases(splits, 2)
    assert (tr, va) == (splits[2]["train"], splits[2]["val"])
    assert fold_cases(splits, "2") == (tr, va)
    tr, va = fold_cases(splits, "all")
    assert tr == sorted(CASES) and va == sorted(CASES)
    with pytest.raises(FPNError, match="0..4"):
        fold_cases(splits, 5)
    with pytest.raises(FPNError):
        fold_cases(splits, "first")


def test_label_fraction_is_documented_nested_and_at_least_one() -> None:
    train = CASES[:20]
    order = [sorted(train)[i] for i in np.random.default_rng(99).permutation(20)]
    picks = {f: apply_label_fraction(list(reversed(train)), f, seed=99) for f in (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)}
    for f, got in picks.items():
        n = max(1, math.ceil(round(f * 20, 9)))
        assert got == order[:n], f  # the first ceil(f x n) of the seeded permutation
    assert len(picks[0.01]) == 1 and len(picks[0.05]) == 1 and len(picks[0.1]) == 2 and len(picks[0.2]) == 4
    assert sorted(picks[1.0]) == sorted(train)
    fs = sorted(picks)
    for small, large in zip(fs, fs[1:]):
        assert set(picks[small]) <= set(picks[large])
    # 0.1 x 30 is 3 cases, not 4 (floating point)
    assert len(apply_label_fraction([f"y{i}" for i in range(37)], 0.1, 0)) == 4
    assert len(apply_label_fraction([f"y{i}" for i in range(30)], 0.1, 0)) == 3
    # validation of a fold is untouched: only the training list is reduced
    splits = make_splits(CASES, PATIENTS)
    tr, va = fold_cases(splits, 0)
    kept = apply_label_fraction(tr, 0.2, 0)
    assert set(kept) <= set(tr) and fold_cases(splits, 0)[1] == va
    # the fraction is not restricted to one patient (the reference's bug)
    assert len({PATIENTS[c] for c in kept}) > 1
    for f in (0, -0.1, 1.01, float("nan"), "a"):
        with pytest.raises(FPNError, match="fraction"):
            apply_label_fraction(train, f, 0)  # type: ignore[arg-type]
    with pytest.raises(FPNError):
        apply_label_fraction([], 0.5, 0)
