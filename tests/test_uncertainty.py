"""Per-case uncertainty on constructed ensembles, calibration measures, calibration.json, members."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fpnunet.calibration_file import Calibration, read_calibration, write_calibration
from fpnunet.errors import FPNError
from fpnunet.evaluation.calibration import (
    caught_share,
    expected_calibration_error,
    fit_temperature,
    flag_threshold,
    spearman,
)
from fpnunet.evaluation.uncertainty import OOFCase, measure_uncertainty
from fpnunet.inference.ensemble_scores import (
    apply_temperature,
    case_uncertainty,
    mean_pairwise_dice,
    members_mean,
    vote_map,
)
from fpnunet.inference.sliding_window import predict_sliding_window
from fpnunet.inference.suggest import Candidate, rank_candidates

SPACING = (0.1, 0.05)


def _members(masks: list[np.ndarray], folds: int = 1) -> np.ndarray:
    """``(F, T, 1, B, A)`` probabilities 0.9 inside each mask, 0.1 outside."""
    probs = np.stack([np.where(m, 0.9, 0.1) for m in masks]).astype(np.float32)[:, None]
    return probs.reshape(folds, len(masks) // folds, 1, *masks[0].shape)


def _square(b0: int, a0: int, size: int = 6, shape=(16, 16)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[b0:b0 + size, a0:a0 + size] = True
    return m


def test_identical_members_agree_fully():
    unc = case_uncertainty(_members([_square(2, 2)] * 8, folds=2), SPACING, ["GA"], Calibration())
    assert unc.disagreement["GA"] == 0.0 and unc.fold_disagreement["GA"] == 0.0
    assert unc.area_low_mm2["GA"] == unc.area_high_mm2["GA"] == pytest.approx(36 * 0.1 * 0.05)
    assert unc.near_miss["GA"] == 0.0 and unc.qc_by == "near_miss"  # the default flag score
    assert unc.qc == "ok" and unc.qc_score == 0.0


def _bump(peak: float, shape=(16, 16)) -> np.ndarray:
    """A smooth bump peaking at ``peak`` in the middle, falling to ~0 at the edges."""
    b, a = np.mgrid[:shape[0], :shape[1]]
    return (peak * np.exp(-((b - 7.5) ** 2 + (a - 7.5) ** 2) / 18.0)).astype(np.float32)


def test_lesion_every_member_almost_found_is_flagged_by_near_miss():
    """All members empty (p < 0.5 everywhere) but a large sub-threshold bump: the members agree fully
    (disagreement 0), yet the case is the kind every member misses -- near_miss flags it."""
    members = np.stack([_bump(0.45)] * 4)[None, :, None]  # (1, 4, 1, 16, 16), every flip the same
    unc = case_uncertainty(members, SPACING, ["GA"], Calibration())
    assert unc.area_high_mm2["GA"] == 0.0 and unc.disagreement["GA"] == 0.0
    assert unc.near_miss["GA"] == 1.0 and unc.qc == "check" and unc.qc_by == "near_miss"
    # an older calibration.json naming disagreement keeps flagging by it: the bump passes unseen
    old = case_uncertainty(members, SPACING, ["GA"], Calibration(qc_score="disagreement", qc_threshold=0.25))
    assert old.qc == "ok" and old.qc_by == "disagreement" and old.qc_score == 0.0
    # a lesion found with confidence (p 0.95) and a one-pixel soft rim (p 0.3): only the rim is near miss
    sharp = np.full((16, 16), 0.02, np.float32)
    sharp[2:14, 2:14] = 0.3
    sharp[3:13, 3:13] = 0.95
    found = case_uncertainty(np.stack([sharp] * 4)[None, :, None], SPACING, ["GA"], Calibration())
    assert found.near_miss["GA"] == pytest.approx(44 / 144) and found.qc == "ok"
    # nothing at all: nothing almost found
    empty = case_uncertainty(np.full((1, 4, 1, 16, 16), 0.01, np.float32), SPACING, ["GA"], Calibration())
    assert empty.near_miss["GA"] == 0.0 and empty.qc == "ok"


def test_disjoint_members_are_flagged():
    masks = [_square(0, 0), _square(0, 8), _square(8, 0), _square(8, 8)]
    unc = case_uncertainty(_members(masks), SPACING, ["GA"], Calibration())
    assert unc.disagreement["GA"] == 1.0 and np.isnan(unc.fold_disagreement["GA"])  # one fold
    assert unc.qc == "check" and unc.qc_score == 1.0 and unc.near_miss["GA"] == 1.0  # mean p 0.3 on every square
    by_disagreement = case_uncertainty(_members(masks), SPACING, ["GA"],
                                       Calibration(qc_score="disagreement", qc_threshold=0.25))
    assert by_disagreement.qc == "check" and by_disagreement.qc_score == 1.0
    # entropy over the lesions and their band: identical members are sure (p 0.9 / 0.1 everywhere there),
    # disjoint ones average to p = 0.3 on every member's square
    same = case_uncertainty(_members([_square(0, 0)] * 4), SPACING, ["GA"], Calibration())
    assert same.entropy["GA"] == pytest.approx(-(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1)), rel=1e-4)
    assert unc.entropy["GA"] > same.entropy["GA"] + 0.2
    votes = vote_map(_members(masks))
    assert votes.max() == 0.25 and votes.min() == 0.0


def test_partial_overlap_and_empty_members():
    assert mean_pairwise_dice(np.zeros((3, 4, 4), bool)) == 1.0  # all empty: agreement
    a, b = _square(0, 0, 4), _square(0, 2, 4)  # half overlap: Dice 0.5
    assert mean_pairwise_dice(np.stack([a, b])) == pytest.approx(0.5)
    unc = case_uncertainty(_members([a, a, b, b], folds=2), SPACING, ["GA"],
                           Calibration(qc_score="disagreement", qc_threshold=0.2))
    assert unc.disagreement["GA"] == 0.0  # within each fold the flips agree
    assert unc.fold_disagreement["GA"] == pytest.approx(0.5)  # the folds do not (shown, never flagged)
    assert unc.qc == "ok"


def test_several_classes_use_the_argmax():
    k_probs = np.zeros((1, 2, 3, 8, 8), np.float32)
    k_probs[:, :, 0] = 1.0
    k_probs[0, 0, :, :4] = [[[0.0]], [[1.0]], [[0.0]]]  # flip 0: class 1 on the top half
    k_probs[0, 1, :, 4:] = [[[0.0]], [[0.0]], [[1.0]]]  # flip 1: class 2 on the bottom half
    unc = case_uncertainty(k_probs, SPACING, ["GA", "drusen"], Calibration())
    assert unc.disagreement == {"GA": 1.0, "drusen": 1.0}
    assert unc.area_low_mm2["GA"] == 0.0 and unc.area_high_mm2["GA"] == pytest.approx(32 * 0.005)


def test_temperature_keeps_masks_and_softens():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, size=(1, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(apply_temperature(p, 1.0), p)
    soft = apply_temperature(p, 2.0)
    np.testing.assert_array_equal(soft > 0.5, p > 0.5)
    assert np.all(np.abs(soft - 0.5) <= np.abs(p - 0.5) + 1e-6)
    k = rng.dirichlet([1, 1, 1], size=(5, 7)).transpose(2, 0, 1).astype(np.float32)
    sharp = apply_temperature(k, 0.5)
    np.testing.assert_array_equal(sharp.argmax(0), k.argmax(0))
    np.testing.assert_allclose(sharp.sum(0), 1.0, rtol=1e-5)


def test_fit_temperature_undoes_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 60_000)
    target = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(np.int64)  # calibrated at sigmoid(z)
    overconfident = (1 / (1 + np.exp(-3 * z)))[None].astype(np.float32)  # sigmoid(3 z): T = 3 undoes it
    t = fit_temperature(overconfident, target)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(overconfident, target)
    after = expected_calibration_error(apply_temperature(overconfident[:, :, None], t)[:, :, 0], target)
    assert before > 0.05 and after < 0.02


def test_flag_threshold_and_caught_share():
    scores = np.arange(10, dtype=float)
    t = flag_threshold(scores, 0.2)
    assert np.sum(scores > t) == 2
    errors = scores.copy()  # the score ranks the errors perfectly
    assert caught_share(scores, errors, t) == 1.0
    assert caught_share(scores, -errors, t) == 0.0
    assert spearman(scores, errors) == pytest.approx(1.0) and np.isnan(spearman(scores, np.ones(10)))


def test_measure_uncertainty_sets_the_threshold_of_the_fixed_score():
    """Cases whose flips disagree more are the wrong ones: the flag's score (near_miss, fixed) ranks
    them and its threshold catches them."""
    rng = np.random.default_rng(2)
    cases = []
    for i in range(10):
        truth = _square(4, 4)
        shift = i // 2  # larger shift: worse prediction and more disagreement between the flips
        masks = [_square(4 + shift, 4), _square(4, 4 + shift), _square(4 + shift, 4 + shift), _square(4, 4)]
        members = np.clip(_members(masks) + rng.normal(0, 0.01, (1, 4, 1, 16, 16)), 0, 1).astype(np.float32)
        cases.append(OOFCase(f"c{i}", i % 2, members, truth.astype(np.int64), SPACING))
    cal, rows, fig = measure_uncertainty(cases, ["GA"], flag_rate=0.2)
    assert cal.calibrated and cal.flag_rate == 0.2 and cal.cases == 10 and cal.folds == [0, 1]
    assert cal.qc_score == fig["qc_score"] == "near_miss" and {"near_miss", "disagreement"} <= set(rows[0])
    assert fig["spearman_one_minus_dice"]["disagreement"] > 0.8
    assert fig["worst_10pct_caught"] == 1.0 and fig["flagged"] == pytest.approx(0.2)
    assert [r["qc"] for r in rows].count("check") == 2
    assert fig["area_interval_coverage"] == 1.0  # the unshifted flip always has the true area


def test_calibration_file_round_trip_and_errors(tmp_path):
    assert read_calibration(tmp_path) == Calibration()  # none: defaults, not calibrated
    path = write_calibration(tmp_path, Calibration(temperature=1.7, qc_score="entropy", qc_threshold=0.3,
                                                   flag_rate=0.2, cases=12, folds=[0, 1], calibrated=True))
    good = path.read_text()
    got = read_calibration(tmp_path)
    assert got.calibrated and got.temperature == 1.7 and got.qc_score == "entropy" and got.folds == [0, 1]
    for bad, message in (({"temperature": 0}, "'temperature' must be a finite positive"),
                         ({"qc_score": "vibes"}, "'qc_score' must be one of"),
                         ({"qc_threshold": "x"}, "'qc_threshold' must be a finite")):
        data = json.loads(good)
        data.update(bad)
        path.write_text(json.dumps(data))
        with pytest.raises(FPNError, match=message):
            read_calibration(tmp_path)
    path.write_text("{")
    with pytest.raises(FPNError, match="calibration.json: not valid JSON"):
        read_calibration(tmp_path)


class _Conv(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, pB, D, pA) -> (N, 1, pB, pA)
        return self.conv(x[:, 0].permute(0, 2, 1, 3))  # depth 4 as channels


@pytest.mark.parametrize("window", ["whole", "patch"])
def test_members_average_to_the_prediction(window):
    nets = [_Conv(1).eval(), _Conv(2).eval()]
    volume = torch.randn(1, 12, 4, 20)
    kw = {"num_outputs": 1, "whole_plane": window == "whole", "step_fraction": 0.5}
    mean = predict_sliding_window(nets, volume, (8, 8), **kw)
    members = predict_sliding_window(nets, volume, (8, 8), members=True, **kw)
    assert members.shape == (2, 4, 1, 12, 20)
    torch.testing.assert_close(members.mean((0, 1)), mean, rtol=1e-5, atol=1e-6)
    if window == "whole":  # summed in the predictor's own order: the same bits as without members
        assert np.array_equal(members_mean(members.numpy()), mean.numpy())
    assert not torch.allclose(members[0, 0], members[0, 1])  # the flips differ
    no_tta = predict_sliding_window(nets, volume, (8, 8), tta=False, members=True, **kw)
    assert no_tta.shape == (2, 1, 1, 12, 20)


def test_ranking_prefers_uncertain_and_spreads():
    def cand(name: str, score: float, feat: list[float]) -> Candidate:
        unc = case_uncertainty(_members([_square(0, 0)]), SPACING, ["GA"], Calibration())
        unc = type(unc)(**{**unc.__dict__, "qc_score": score})
        return Candidate(name, unc, np.asarray(feat, float), 0.0)

    cands = [cand("a", 0.9, [0, 0]), cand("a_copy", 0.85, [0, 0.01]), cand("b", 0.5, [5, 5]), cand("c", 0.1, [0, 1])]
    assert [c.case for c in rank_candidates(cands, diversity=0.0)] == ["a", "a_copy", "b", "c"]
    spread = [c.case for c in rank_candidates(cands, diversity=0.5)]
    assert spread[:2] == ["a", "b"]  # the near-copy of "a" waits
    near_labelled = rank_candidates(cands, labelled_features=np.array([[0.0, 0.0]]), diversity=0.8)
    assert near_labelled[0].case == "b"  # "a" looks like a labelled case already
