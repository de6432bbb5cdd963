"""fpn_find_best_configuration on out-of-fold probability folders built directly (no training):
the clearly better candidate is chosen, post-processing that removes true lesions is rejected and
one that removes false specks is kept; post-processing steps; the chosen-pipeline file's checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fpnunet.commands.find_best_configuration import main as find_best
from fpnunet.errors import FPNError
from fpnunet.inference.export import write_probabilities
from fpnunet.inference.postprocess import PostProcessing
from fpnunet.io import write_image
from fpnunet.pipeline_files import check_chosen, read_chosen
from fpnunet.plans.candidates import Candidate
from fpnunet.plans.plan import Plan

NAME = "Dataset941_Choose"
LABELS = {"background": 0, "GA": 1}
SPACING = (0.1, 0.1)
N_FOLDS, PER_FOLD = 5, 3


def _reference(rng: np.random.Generator, small: bool) -> np.ndarray:
    seg = np.zeros((16, 24), np.uint8)
    b, a = rng.integers(1, 8), rng.integers(1, 12)
    seg[b:b + 6, a:a + 8] = 1
    if small:  # two true 2-pixel lesions far from the big one
        seg[14, 1:3] = 1
        seg[1, 21:23] = 1
    return seg


def build(tmp_path: Path, monkeypatch, predictions: dict[str, callable], small_lesions: bool = False,
          lesion_free: int = 0) -> Path:
    """Raw labels, a plan with one candidate per entry of ``predictions`` (case reference, rng ->
    probabilities) and each candidate's out-of-fold validation probabilities in five folds; the
    first ``lesion_free`` cases have an empty reference."""
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    labels_dir = tmp_path / "raw" / NAME / "labelsTr"
    labels_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    refs = {}
    for fold in range(N_FOLDS):
        for i in range(PER_FOLD):
            case = f"c{fold}{i}"
            ref = _reference(rng, small_lesions)
            refs[case] = (fold, ref * 0 if len(refs) < lesion_free else ref)
            write_image(labels_dir / f"{case}.nii.gz", refs[case][1], SPACING)
    candidates = []
    for (name, make), pretrained in zip(predictions.items(), ("none", "FAF", "SLO")):
        cand = Candidate(name, "fpn", pretrained=pretrained, reason="test")
        candidates.append(cand)
        for case, (fold, ref) in refs.items():
            val = tmp_path / "res" / NAME / cand.model_folder_name() / f"fold_{fold}" / "validation"
            val.mkdir(parents=True, exist_ok=True)
            write_probabilities(np.clip(make(ref, rng), 0, 1)[None].astype(np.float32), val / f"{case}.npz", LABELS)
    pre = tmp_path / "pre" / NAME
    pre.mkdir(parents=True)
    Plan(dataset_name=NAME, labels=LABELS, candidates=candidates).save(pre / "plans.json")
    return tmp_path / "res" / NAME


def good(ref, rng):
    return 0.1 + 0.8 * ref + rng.uniform(-0.05, 0.05, ref.shape)


def bad(ref, rng):
    """Half of each lesion missed (0 there), a false blob elsewhere."""
    out = 0.1 + 0.8 * ref
    cols = np.flatnonzero(ref.any(axis=0))
    out[:, cols[: len(cols) // 2]] = 0.0
    out[12:15, 18:22] = 0.9 * (ref[12:15, 18:22] == 0)
    return out


def test_the_clearly_better_candidate_is_chosen(tmp_path, monkeypatch, capsys):
    results = build(tmp_path, monkeypatch, {"weak": bad, "strong": good})
    assert find_best(["-d", "941"]) in (0, None)
    out = capsys.readouterr().out
    choice = read_chosen(results)
    assert [m["candidate"] for m in choice["members"]] == ["strong"]
    assert choice["members"] == [{"candidate": "strong", "model_folder": "fpn__lf1__ssl-FAF",
                                  "folds": ["0", "1", "2", "3", "4"]}]
    scores = {s["name"]: s for s in choice["scores"]}
    assert set(scores) == {"weak", "strong", "weak + strong"}  # every single one and the pair
    assert scores["strong"]["dice"] > 0.95 > scores["weak + strong"]["dice"] > scores["weak"]["dice"]
    assert len(scores["strong"]["fold_dice"]) == N_FOLDS and scores["strong"]["spread"] >= 0
    assert choice["predict_command"] == "fpn_predict -d 941 --best -i INPUT_FOLDER -o OUTPUT_FOLDER"
    assert "chosen: strong" in out and "weak + strong" in out
    assert (results / "chosen_pipeline.txt").read_text().count("CV Dice") >= 2
    assert choice["within_noise"] == []  # ahead of both others in every fold, by far
    assert "certainty: the choice leads every other pipeline" in out
    png = (results / "chosen_pipeline.png").read_bytes()  # the scores as a picture: one row per pipeline
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "chosen_pipeline.png" in out
    height = int.from_bytes(png[20:24], "big")
    assert height == round(90 * (0.9 + 0.32 * 3))


def test_the_plot_keeps_every_single_candidate_and_the_best_ensembles():
    from fpnunet.report.choice_plot import rows_to_draw

    def s(*members):
        return {"name": " + ".join(members), "members": list(members)}

    scores = [s("a", "b"), s("a"), s("a", "c"), s("b", "c"), s("b"), s("c"), s("a", "b", "c")]
    drawn = [r["name"] for r in rows_to_draw({"scores": scores}, max_rows=4)]
    assert drawn == ["a + b", "a", "b", "c"]  # three singles, then room for one ensemble: the best


def test_pipelines_the_cross_validation_cannot_separate_are_named(tmp_path, monkeypatch, capsys):
    def same(ref, rng):
        return 0.1 + 0.8 * ref

    results = build(tmp_path, monkeypatch, {"a": same, "b": same})
    assert find_best(["-d", "941"]) in (0, None)
    out = capsys.readouterr().out
    close = read_chosen(results)["within_noise"]
    assert [c["name"] for c in close] == ["b", "a + b"] and all(c["lead"] == 0 for c in close)
    assert "certainty: low; the cross-validation does not separate the choice from 2 other pipeline(s)" in out
    assert "single candidates b (+0.0, needs > 0.0)" in out


def test_within_noise_compares_the_lead_with_its_spread_over_folds():
    from fpnunet.evaluation.choose import Score, within_noise

    case_fold = {f"c{f}": str(f) for f in range(5)}
    best = Score(("x",), {c: 0.8 for c in case_fold})
    steady = Score(("y",), {c: 0.7 for c in case_fold})  # 10 points behind in every fold
    erratic = Score(("z",), {c: v for c, v in zip(case_fold, (0.5, 0.9, 0.6, 0.9, 0.85))})  # lead 5, spread 18
    assert [c["name"] for c in within_noise([best, steady, erratic], case_fold)] == ["z"]
    three = {c: f for c, f in case_fold.items() if f in "01"}  # two folds: no spread, nothing separated
    assert len(within_noise([Score(("x",), {c: 0.8 for c in three}), Score(("y",), {c: 0.1 for c in three})],
                            three)) == 1


def test_the_noise_margin_is_a_one_sided_t_test_at_five_percent():
    from fpnunet.evaluation.choose import Score, noise_margin, paired_gain

    # 3 folds: t(0.95, 2) = 2.920 -> 2.920 / sqrt(3) = 1.686 standard deviations; 5 folds: 2.132 / sqrt(5) = 0.953
    assert noise_margin(1.0, 3) == pytest.approx(1.686, abs=1e-3)
    assert noise_margin(1.5811, 5) == pytest.approx(0.953 * 1.5811, abs=1e-3)
    # from paired_gain's spread: per-fold gains 0, 1, 2 (sd 1); two folds say nothing (infinite spread)
    case_fold = {f"c{f}": str(f) for f in range(3)}
    old = Score(("x",), {c: 0.0 for c in case_fold})
    _, spread, per_fold = paired_gain(Score(("x",), {c: float(f) for c, f in case_fold.items()}), old, case_fold)
    assert noise_margin(spread, len(per_fold)) == pytest.approx(1.686, abs=1e-3)
    two = {c: f for c, f in case_fold.items() if f != "2"}
    _, spread, per_fold = paired_gain(Score(("x",), {c: 0.2 for c in two}), Score(("x",), {c: 0.1 for c in two}), two)
    assert noise_margin(spread, len(per_fold)) == float("inf")


def test_a_small_gain_on_three_folds_is_within_the_noise():
    """The 5 % labels case: a threshold gains a little in each of 3 folds, more than the spread of
    that gain (which the earlier rule kept) but not beyond the t-test's margin (1.69 sd at 3 folds),
    so neither a post-processing step nor a lead in the choice counts."""
    from fpnunet.evaluation.choose import Score, noise_margin, paired_gain, within_noise

    case_fold = {f"c{f}{i}": str(f) for f in range(3) for i in range(2)}
    old = Score(("x",), {c: 0.5 for c in case_fold})
    new = Score(("x",), {c: 0.5 + (0.002, 0.004, 0.012)[int(f)] for c, f in case_fold.items()})
    gain, spread, per_fold = paired_gain(new, old, case_fold)
    assert spread < gain < noise_margin(spread, len(per_fold))
    assert [c["name"] for c in within_noise([new, Score(("y",), old.per_case)], case_fold)] == ["y"]


def test_postprocessing_that_removes_true_lesions_is_rejected(tmp_path, monkeypatch):
    """Perfect predictions of big and 2-pixel true lesions: every minimum area above 2 pixels and
    keep-largest cost Dice, so nothing is kept."""
    results = build(tmp_path, monkeypatch, {"only": good}, small_lesions=True)
    find_best(["-d", "941"])
    choice = read_chosen(results)
    assert choice["postprocessing"] == PostProcessing().to_dict()
    steps = {s["step"]: s for s in choice["postprocessing_steps"]}
    assert not any(s["kept"] for s in steps.values())
    assert steps["keep_largest"]["gain"] < 0
    # the harmful minimum area really removes lesions: four pixels drop the two small ones
    from fpnunet.evaluation.choose import foreground_dice

    ref = _reference(np.random.default_rng(3), True)
    probs = (0.1 + 0.8 * ref)[None]
    assert foreground_dice(ref, PostProcessing(min_area_mm2=4 * 0.01).apply(probs, SPACING, LABELS), LABELS) < 1


def test_postprocessing_that_removes_false_specks_is_kept(tmp_path, monkeypatch):
    def specks(ref, rng):
        out = good(ref, rng)
        out[0, 0] = out[15, 23] = out[0, 23] = 0.9  # single false pixels in every case
        return out * (1 - 0.0 * ref)

    results = build(tmp_path, monkeypatch, {"specks": specks})
    find_best(["-d", "941"])
    post = read_chosen(results)["postprocessing"]
    assert post["min_area_mm2"] > 0 or post["keep_largest"]


def test_postprocessing_steps():
    seg = np.zeros((10, 10), np.uint8)
    seg[1:6, 1:6] = 1
    seg[3, 3] = 0  # a hole
    seg[8, 8] = 1  # a one-pixel lesion
    labels = {"background": 0, "GA": 1}
    assert PostProcessing(fill_holes=True).clean(seg, (1, 1), labels)[3, 3] == 1
    small = PostProcessing(min_area_mm2=2).clean(seg, (1, 1), labels)
    assert small[8, 8] == 0 and small[1, 1] == 1
    largest = PostProcessing(keep_largest=True).clean(seg, (1, 1), labels)
    assert largest[8, 8] == 0 and largest.sum() == 24
    probs = np.full((1, 10, 10), 0.45, np.float32)
    assert PostProcessing(threshold=0.4).apply(probs, (1, 1), labels).all()
    assert not PostProcessing().apply(probs, (1, 1), labels).any()


def test_no_out_of_fold_probabilities_is_one_line(tmp_path, monkeypatch, capsys):
    results = build(tmp_path, monkeypatch, {"strong": good})
    for f in results.rglob("*.npz"):
        f.unlink()
    with pytest.raises(SystemExit):
        find_best(["-d", "941"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no candidate") and "--npz" in err and "\n" not in err
    assert not (results / "chosen_pipeline.json").exists()


@pytest.mark.parametrize("change, message", [
    ({"members": []}, "members"),
    ({"members": [{"candidate": "a", "model_folder": "../x", "folds": ["0"]}]}, "folder name"),
    ({"postprocessing": {"threshold": 1.5, "min_area_mm2": 0, "fill_holes": False, "keep_largest": False}},
     "threshold"),
])
def test_chosen_pipeline_is_checked(change, message):
    choice = {"members": [{"candidate": "a", "model_folder": "fpn__lf1__scratch", "folds": ["0"]}],
              "postprocessing": PostProcessing().to_dict()} | change
    with pytest.raises(FPNError, match=message):
        check_chosen(json.loads(json.dumps(choice)), "chosen_pipeline.json")


def test_a_choice_on_shortened_training_is_named(tmp_path, monkeypatch, capsys):
    from fpnunet.plans.plan import Configuration
    from fpnunet.training.run_config import RunConfig

    results = build(tmp_path, monkeypatch, {"weak": bad, "strong": good})
    plan_path = tmp_path / "pre" / NAME / "plans.json"
    plan = Plan.load(plan_path)
    plan.configurations["fpn"] = Configuration()  # the plan's schedule: 40 epochs x 100 steps
    plan.save(plan_path)
    for folder, (epochs, steps) in (("fpn__lf1__scratch", (6, 8)), ("fpn__lf1__ssl-FAF", (40, 100))):
        for fold in range(N_FOLDS):
            RunConfig(epochs=epochs if fold else epochs + 1, iterations_per_epoch=steps).save(
                results / folder / f"fold_{fold}")
    assert find_best(["-d", "941"]) in (0, None)
    out = capsys.readouterr().out
    # the fewest steps over the folds; the candidate trained as planned is not named
    assert read_chosen(results)["short_training"] == [{"candidate": "weak", "steps": 48, "planned": 4000}]
    assert "short training: weak 48 of 4000 planned steps per fold" in out
    assert "rerun fpn_train_folds without --epochs/--iterations-per-epoch" in out


def test_no_run_settings_no_short_training_line(tmp_path, monkeypatch, capsys):
    build(tmp_path, monkeypatch, {"weak": bad, "strong": good})
    assert find_best(["-d", "941"]) in (0, None)
    assert "short training" not in capsys.readouterr().out


def test_a_labelled_set_without_a_lesion_free_case_is_named_a_blind_spot(tmp_path, monkeypatch, capsys):
    results = build(tmp_path, monkeypatch, {"weak": bad, "strong": good})
    assert find_best(["-d", "941"]) in (0, None)
    out = capsys.readouterr().out
    assert read_chosen(results)["cases_without_lesion"] == 0
    assert ("blind spot: all 15 labelled cases have a lesion, so the cross-validation never sees a scan "
            "without one") in out and "label a few of them and rerun the choice" in out
    assert "blind spot" in (results / "chosen_pipeline.txt").read_text()


def test_one_lesion_free_labelled_case_removes_the_blind_spot(tmp_path, monkeypatch, capsys):
    results = build(tmp_path, monkeypatch, {"weak": bad, "strong": good}, lesion_free=2)
    assert find_best(["-d", "941"]) in (0, None)
    assert read_chosen(results)["cases_without_lesion"] == 2
    assert "blind spot" not in capsys.readouterr().out


def test_caveats_short_and_long_say_the_same_and_old_choices_have_none():
    from fpnunet.choice_caveats import caveats

    choice = {"cases": 5, "within_noise": [], "short_training": [{"candidate": "a", "steps": 8, "planned": 80}],
              "cases_without_lesion": 0}
    found = caveats(choice)
    assert [c.key for c in found] == ["certainty", "short_training", "no_lesion_free"]
    assert found[0].short == "choice certainty: clear" and "a 8 of 80 planned steps" in found[1].long
    assert found[2].short == "no lesion-free labelled case: false positives on healthy scans unmeasured"
    assert caveats({"cases": 5}) == []  # written before any caveat was recorded
    assert [c.key for c in caveats({**choice, "cases_without_lesion": 1, "short_training": []})] == ["certainty"]
