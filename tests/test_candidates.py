"""Candidate configurations: the plan's rules and reasons, user add/drop, what fpn_train_folds -c
still has to run (finished folds skipped, killed ones continued), and the whole path on a fresh
tiny dataset: plan -> fpn_train_folds -c -> fpn_find_best_configuration -> fpn_predict --best."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fpnunet.errors import FPNError
from fpnunet.plans.candidates import (
    SCRATCH_WEIGHT_DECAY,
    Candidate,
    DatasetFacts,
    auto_configurations,
    merge_candidates,
    parse_candidate,
    propose_candidates,
)
from fpnunet.plans.plan import Plan
from fpnunet.training.candidate_runs import fold_jobs, pretraining_jobs, queue_jobs


def test_rules_and_reasons():
    facts = DatasetFacts(("fpn", "omnia", "lachinov"), ("FAF", "SLO"), {"FAF": 10, "SLO": 0},
                         every_case_has_enface=True, num_unlabelled_with_enface=3)
    cands, notes = propose_candidates(facts)
    by = {c.name: c for c in cands}
    assert list(by) == ["fpn-scratch", "fpn-ssl-FAF", "fpn-cmc", "omnia-enface", "lachinov-scratch"]
    assert by["fpn-scratch"].weight_decay == SCRATCH_WEIGHT_DECAY  # the measured rule
    assert by["fpn-ssl-FAF"].weight_decay == 1e-4 and by["lachinov-scratch"].weight_decay == 1e-4
    assert by["omnia-enface"].enface_inputs == ("FAF", "SLO") and all(c.reason for c in cands)
    assert by["fpn-ssl-FAF"].model_folder_name() == "fpn__lf1__ssl-FAF"
    assert by["omnia-enface"].model_folder_name() == "omnia__lf1__scratch__enf-FAF-SLO"
    assert by["fpn-cmc"].model_folder_name() == "fpn__lf1__ssl-FAF__cmc"
    # no SLO image on any training case: no SLO fine-tuning; a test case without en-face images: no Omnia-Net
    facts = DatasetFacts(("fpn", "omnia"), ("FAF", "SLO"), {"FAF": 10, "SLO": 0}, every_case_has_enface=False)
    cands, notes = propose_candidates(facts)
    assert [c.name for c in cands] == ["fpn-scratch", "fpn-ssl-FAF"]
    assert any("Omnia-Net" in n for n in notes) and any("CMC" in n for n in notes)


def test_auto_plans_the_en_face_input_configurations_only_when_every_case_has_the_images():
    every = DatasetFacts((), ("FAF", "SLO"), {"FAF": 10, "SLO": 10}, every_case_has_enface=True)
    configs, reason = auto_configurations(every)
    assert configs == ["fpn", "lachinov", "omnia", "plane2d"] and "every training and test case" in reason
    some = DatasetFacts((), ("FAF",), {"FAF": 4}, every_case_has_enface=False)
    assert auto_configurations(some)[0] == ["fpn", "lachinov"]
    assert "not every" in auto_configurations(some)[1]
    assert auto_configurations(DatasetFacts(()))[0] == ["fpn", "lachinov"]


def test_plan_default_is_auto_and_a_bad_name_touches_nothing(tmp_path, monkeypatch, capsys):
    from fpnunet.commands.plan_and_preprocess import main as plan_and_preprocess
    from fpnunet.synthetic.dataset import make_synthetic_dataset

    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    make_synthetic_dataset(tmp_path / "raw" / "Dataset962_Auto", n=4, seed=1, shape=(8, 96, 32), num_test=1,
                           show_progress=False)
    with pytest.raises(SystemExit) as exc:
        plan_and_preprocess(["-d", "962", "-c", "fpn", "fnp"])
    assert exc.value.code == 1 and not (tmp_path / "pre").exists()
    assert "error: -c fnp: not a registered network" in capsys.readouterr().err
    assert plan_and_preprocess(["-d", "962", "-np", "1", "--no-progress", "--no-preprocess"]) == 0
    out = capsys.readouterr().out
    assert "configurations: fpn, lachinov, omnia, plane2d (auto:" in out
    plan = Plan.load(tmp_path / "pre" / "Dataset962_Auto" / "plans.json")
    assert sorted(plan.configurations) == ["fpn", "lachinov", "omnia", "plane2d"]
    assert {"omnia-enface", "plane2d-enface", "lachinov-scratch", "fpn-scratch"} <= {c.name for c in plan.candidates}


def test_user_adds_and_drops():
    proposed, _ = propose_candidates(DatasetFacts(("fpn",), ("FAF",), {"FAF": 4}))
    mine = parse_candidate("fpn-faf-wd3:fpn:pretrained=FAF:wd=0.001")
    assert (mine.pretrained, mine.weight_decay, mine.source) == ("FAF", 0.001, "user")
    merged = merge_candidates(proposed, [mine], ["fpn-scratch"])
    assert [c.name for c in merged] == ["fpn-faf-wd3"]  # it replaces the rule's FAF candidate (same folder)
    for bad in ("x", "a:fpn:pretrained=OCT", "a:fpn:wd=lots", "a:fpn:colour=red"):
        with pytest.raises(FPNError):
            parse_candidate(bad)
    plan = Plan.from_dict(Plan(dataset_name="D", candidates=merged, dropped_candidates=["fpn-scratch"]).to_dict())
    assert plan.candidates == merged and plan.dropped_candidates == ["fpn-scratch"]


def _fold(results: Path, folder: str, fold: str, *files: str) -> None:
    d = results / folder / f"fold_{fold}"
    (d / "validation").mkdir(parents=True)
    for f in files:
        (d / f).write_bytes(b"x")


def test_what_is_left_to_run(tmp_path):
    results = tmp_path / "res"
    scratch, ssl = Candidate("s", "fpn"), Candidate("f", "fpn", pretrained="FAF")
    _fold(results, "fpn__lf1__scratch", "0", "checkpoint_final.pth", "validation/summary.json", "validation/c.npz")
    _fold(results, "fpn__lf1__scratch", "1", "checkpoint_final.pth", "validation/summary.json")  # no --npz
    _fold(results, "fpn__lf1__scratch", "2", "checkpoint_latest.pth")  # killed
    jobs, done = fold_jobs("9", results, [scratch], ["0", "1", "2", "3"], ["--epochs", "2"])
    assert done == ["s fold 0: finished, skipped"]
    by = {j.label: j.args for j in jobs}
    assert by["s fold 1"][-1] == "--val" and "--npz" in by["s fold 1"] and "--epochs" not in by["s fold 1"]
    assert by["s fold 2"][-1] == "--continue" and "--epochs" in by["s fold 2"]
    assert "--continue" not in by["s fold 3"] and by["s fold 3"][:2] == ("9", "3")
    assert by["s fold 3"][by["s fold 3"].index("--weight-decay") + 1] == "0.0001"
    jobs, done = pretraining_jobs("9", results, [scratch, ssl], ["--epochs=1"])
    assert [j.label for j in jobs] == ["pretrain fpn FAF"] and jobs[0].candidates == ("f",)
    (results / "pretrain__fpn__FAF" / "fold_all").mkdir(parents=True)
    (results / "pretrain__fpn__FAF" / "fold_all" / "checkpoint_final.pth").write_bytes(b"x")
    assert pretraining_jobs("9", results, [ssl], [])[0] == []
    jobs, _ = fold_jobs("9", results, [ssl], ["0"], [])
    assert str(results / "pretrain__fpn__FAF" / "fold_all" / "checkpoint_final.pth") in jobs[0].args


def test_fresh_dataset_end_to_end(tmp_path, monkeypatch, capsys):
    """Two candidates, fold 0 (one fold keeps it short), on two CPU slots; then a killed fold is
    continued and the finished one skipped; the choice is written and fpn_predict --best follows it."""
    from fpnunet.commands.find_best_configuration import main as find_best
    from fpnunet.commands.plan_and_preprocess import main as plan_and_preprocess
    from fpnunet.commands.predict import main as predict
    from fpnunet.commands.train_folds import main as train_folds
    from fpnunet.synthetic.dataset import make_synthetic_dataset

    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    raw = tmp_path / "raw" / "Dataset961_Pick"
    make_synthetic_dataset(raw, n=8, seed=2, shape=(8, 96, 32), num_test=2, show_progress=False)
    plan_and_preprocess(["-d", "961", "-np", "1", "--no-progress", "-c", "fpn", "lachinov",
                         "--drop-candidate", "fpn-ssl-SLO", "--drop-candidate", "fpn-ssl-FAF"])
    out = capsys.readouterr().out
    assert "fpn-scratch" in out and "lachinov-scratch" in out and "dropped by the user: fpn-ssl-FAF, fpn-ssl-SLO" in out
    plan = Plan.load(tmp_path / "pre" / "Dataset961_Pick" / "plans.json")
    assert [c.name for c in plan.candidates] == ["fpn-scratch", "lachinov-scratch"]
    schedule = ["--epochs", "1", "--iterations-per-epoch", "1", "--num-workers", "0", "--bn-recalibration", "1"]
    train_folds(["-d", "961", "-c", "all", "--folds", "0", "--devices", "cpu", "cpu", *schedule])
    results = tmp_path / "res" / "Dataset961_Pick"
    for folder in ("fpn__lf1__scratch", "lachinov__lf1__scratch"):
        assert list((results / folder / "fold_0" / "validation").glob("*.npz"))
    # a kill of a fold: its final checkpoint and validation gone, the latest checkpoint kept
    killed = results / "fpn__lf1__scratch" / "fold_0"
    (killed / "checkpoint_final.pth").unlink()
    shutil.rmtree(killed / "validation")
    capsys.readouterr()
    train_folds(["-d", "961", "-c", "all", "--folds", "0", "--devices", "cpu", *schedule])
    out = capsys.readouterr().out
    assert "lachinov-scratch fold 0: finished, skipped" in out and "fpn-scratch fold 0: finished" not in out
    assert "[fpn-scratch fold 0 @ cpu] started" in out and "summary: 1 run(s) done, 1 already finished" in out
    assert "--continue" in (killed / "command.txt").read_text() and list((killed / "validation").glob("*.npz"))

    find_best(["-d", "961"])
    out = capsys.readouterr().out
    choice = json.loads((results / "chosen_pipeline.json").read_text())
    assert {s["name"] for s in choice["scores"]} == {"fpn-scratch", "lachinov-scratch",
                                                      "fpn-scratch + lachinov-scratch"}
    assert "chosen:" in out and "fpn_predict -d 961 --best" in out
    with pytest.raises(SystemExit):
        predict(["-d", "961", "--best", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "x"), "-f", "0"])
    assert "-f: not with --best" in capsys.readouterr().err and not (tmp_path / "x").exists()
    predict(["-d", "961", "--best", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "best")])
    # one fold: no spread over folds, so nothing is separated from the choice, and prediction says so;
    # the folds trained a few steps of the plan's schedule, which the choice and prediction name
    err = capsys.readouterr().err
    assert choice["within_noise"] and f"choice certainty low: {len(choice['within_noise'])} pipeline(s)" in err
    assert {c["candidate"] for c in choice["short_training"]} == {"fpn-scratch", "lachinov-scratch"}
    assert "short training: fpn-scratch" in out and "chosen on shortened training" in err
    with open(tmp_path / "best" / "lesion_areas.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    members = " + ".join(m["candidate"] for m in choice["members"])
    assert len(rows) == 2 and {r["configuration"] for r in rows} == {members}
    # the scores over configurations x folds x flips (the member runs' members/ went with .members/)
    assert all(r["qc"] in ("ok", "check") and float(r["area_low_mm2"]) <= float(r["area_high_mm2"]) for r in rows)
    assert all((r["fold_disagreement"] != "") == (sum(len(m["folds"]) for m in choice["members"]) > 1) for r in rows)
    assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name != "uncertainty") == [
        "Pick_T000.nii.gz", "Pick_T001.nii.gz", "lesion_areas.csv"]


def test_queue_interleaves_folds_and_fine_tuning_waits_only_on_its_pretraining(tmp_path):
    results = tmp_path / "res"
    scratch, ssl, lach = Candidate("s", "fpn"), Candidate("f", "fpn", pretrained="FAF"), Candidate("l", "lachinov")
    _fold(results, "fpn__lf1__scratch", "0", "checkpoint_final.pth", "validation/summary.json", "validation/c.npz")
    jobs, done = queue_jobs("9", results, [scratch, ssl, lach], ["0", "1", "2"], [], [])
    assert done == ["s fold 0: finished, skipped"]
    assert [j.label for j in jobs] == ["pretrain fpn FAF", "s fold 1", "f fold 0", "l fold 0", "s fold 2",
                                       "f fold 1", "l fold 1", "f fold 2", "l fold 2"]
    assert {j.label for j in jobs if j.needs == "pretrain fpn FAF"} == {"f fold 0", "f fold 1", "f fold 2"}
    assert all(j.needs is None for j in jobs if not j.label.startswith("f "))
    (results / "pretrain__fpn__FAF" / "fold_all").mkdir(parents=True)  # pretraining finished: nothing to wait on
    (results / "pretrain__fpn__FAF" / "fold_all" / "checkpoint_final.pth").write_bytes(b"x")
    jobs, _ = queue_jobs("9", results, [ssl], ["0"], [], [])
    assert [(j.label, j.needs) for j in jobs] == [("f fold 0", None)]


def test_fine_tuned_folds_start_when_their_pretraining_is_done(capsys):
    """Two slots; the pretraining (0.4 s) ends while the first scratch fold (1.2 s) runs: the fine-tuned
    fold 0 starts next, before the scratch fold 1, and its fold 1 before the scratch fold 2 (queued
    after all scratch folds they would start last); a failed pretraining drops its folds only."""
    from fpnunet.commands.train_folds import run_jobs

    def sleep(seconds: float) -> list[str]:
        return ["sleep", str(seconds)]

    commands = {"pre": sleep(0.4), "s0": sleep(1.2), "f0": sleep(0.1), "s1": sleep(1.2), "f1": sleep(0.1),
                "s2": sleep(0.1)}
    needs = {"f0": "pre", "f1": "pre"}
    ran = run_jobs(commands, ["cpu", "cpu"], needs=needs)
    started = [line.split()[0][1:] for line in capsys.readouterr().out.splitlines() if "started" in line]
    assert started == ["pre", "s0", "f0", "s1", "f1", "s2"] and all(r.ok for r in ran)
    commands["pre"] = ["false"]
    ran = run_jobs(commands, ["cpu", "cpu"], needs=needs)
    assert sorted(r.fold for r in ran) == ["pre", "s0", "s1", "s2"] and not ran[0].ok


def test_candidates_train_the_folds_the_splits_have(tmp_path, monkeypatch):
    """Two labelled cases (two patients) make two patient-grouped folds: ``-c all`` without --folds
    trains folds 0 and 1, not five (folds 2-4 would fail: 'fold 3 does not exist')."""
    from fpnunet.commands.plan_and_preprocess import main as plan_and_preprocess
    from fpnunet.commands.train_folds import build_parser, config_from_args
    from fpnunet.synthetic.dataset import make_synthetic_dataset
    from fpnunet.training.candidate_runs import split_folds
    from fpnunet.training.splits import SPLITS_FILE

    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    raw = make_synthetic_dataset(tmp_path / "raw" / "Dataset962_Few", n=12, labelled_fraction=0.17, seed=2,
                                 shape=(8, 96, 32), num_test=2, show_progress=False)
    patients = load_json_patients(raw)
    plan_and_preprocess(["-d", "962", "-np", "1", "--no-progress"])
    assert patients == 2 and split_folds("962", "fpn") == ["0", "1"]
    assert (tmp_path / "pre" / "Dataset962_Few" / SPLITS_FILE).is_file()
    parsed = build_parser().parse_known_args(["962", "-c", "all", "--devices", "cpu"])
    assert not config_from_args(parsed).folds_given
    parsed = build_parser().parse_known_args(["962", "-c", "all", "--devices", "cpu", "--folds", "0"])
    assert config_from_args(parsed).folds_given


def load_json_patients(raw: Path) -> int:
    """How many patients the labelled training cases come from."""
    from fpnunet.raw_dataset import labels_dir, load_dataset_json

    patients = load_dataset_json(raw).patients
    labelled = [p.name.split(".")[0] for p in labels_dir(raw, "Tr").iterdir()]
    return len({patients[c] for c in labelled})
