"""Metrics (hand-computed values), folder evaluation, summary files and the fpn_evaluate CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fpnunet.atomic import save_json
from fpnunet.commands.evaluate import main
from fpnunet.errors import FPNError
from fpnunet.evaluation.crossval import evaluate_crossval
from fpnunet.evaluation.evaluate import CSV_COLUMNS, evaluate_folders
from fpnunet.evaluation.metrics import area_mm2, case_metrics, dice, hd95, iou
from fpnunet.io import write_image
from fpnunet.prediction_folder import read_label_map

SP = (2.0, 0.5)  # (sB, sA) mm: B-scans four times coarser than A-scans


def square(shape=(10, 10), top=2, left=2, size=4, value=1) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[top:top + size, left:left + size] = value
    return m


# ----------------------------------------------------------------------------- metrics
def test_dice_iou_area_on_shifted_squares():
    ref = square(left=2)
    pred = square(left=4)  # overlap 4 x 2 = 8 px of 16 each
    assert dice(ref, pred) == pytest.approx(2 * 8 / 32)
    assert iou(ref, pred) == pytest.approx(8 / 24)
    assert dice(ref, ref) == 1.0 and iou(ref, ref) == 1.0
    assert area_mm2(ref, (0.12, 0.0113)) == pytest.approx(16 * 0.12 * 0.0113)


def test_empty_masks():
    empty = np.zeros((6, 6), bool)
    full = square((6, 6), 1, 1, 2)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0 and hd95(empty, empty, SP) == 0.0
    for a, b in ((empty, full), (full, empty)):
        assert dice(a, b) == 0.0 and iou(a, b) == 0.0
        assert math.isnan(hd95(a, b, SP))


def test_hd95_uses_anisotropic_spacing_in_numpy_order():
    # one pixel apart by (1 B-scan, 2 A-scans): sqrt((1*2.0)^2 + (2*0.5)^2)
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[3, 3] = True
    b[4, 5] = True
    assert hd95(a, b, SP) == pytest.approx(math.sqrt(5.0))
    # a 4x4 square shifted by one pixel: along B costs sB = 2.0 mm, along A costs sA = 0.5 mm
    ref = square()
    assert hd95(ref, square(top=3), SP) == pytest.approx(2.0)
    assert hd95(ref, square(left=3), SP) == pytest.approx(0.5)
    assert hd95(ref, square(left=3), (1.0, 1.0)) == pytest.approx(1.0)


def test_hd95_is_the_larger_directed_95th_percentile():
    # prediction = the square plus one stray pixel 4 A-scans (2.0 mm) right of the square's edge.
    # pred -> ref: 12 ring pixels at 0 and one at 2.0; P95 (linear) of 13 values = 0.4 * 2.0.
    # ref -> pred: all 0. Plain Hausdorff would be 2.0.
    ref = square((12, 12))
    pred = ref.copy()
    pred[2, 9] = 1
    assert hd95(ref, pred, SP) == pytest.approx(0.8)
    assert hd95(pred, ref, SP) == pytest.approx(0.8)


def test_case_metrics_multiclass_counts_and_areas():
    ref = np.zeros((6, 8), np.uint8)
    pred = np.zeros((6, 8), np.uint8)
    ref[0:2, 0:4] = 1  # 8 px
    pred[0:2, 0:2] = 1  # 4 px, all inside ref class 1
    pred[5, 7] = 1  # 1 false positive px of class 1
    ref[4:6, 4:6] = 2  # 4 px; prediction has none of class 2
    labels = {"background": 0, "GA": 1, "other": 2, "absent": 3}
    m = case_metrics(ref, pred, (0.5, 0.25), labels)
    assert set(m) == {"1", "2", "3"}
    c1 = m["1"]
    assert (c1["TP"], c1["FP"], c1["FN"], c1["TN"]) == (4, 1, 4, 48 - 9)
    assert (c1["n_ref"], c1["n_pred"]) == (8, 5)
    assert c1["Dice"] == pytest.approx(8 / 13)
    assert c1["IoU"] == pytest.approx(4 / 9)
    assert c1["ref_area_mm2"] == pytest.approx(8 * 0.125)
    assert c1["pred_area_mm2"] == pytest.approx(5 * 0.125)
    assert c1["area_abs_error_mm2"] == pytest.approx(3 * 0.125)
    assert m["2"]["Dice"] == 0.0 and math.isnan(m["2"]["HD95"]) and m["2"]["FN"] == 4
    assert m["3"]["Dice"] == 1.0 and m["3"]["IoU"] == 1.0 and m["3"]["HD95"] == 0.0 and m["3"]["TN"] == 48


def test_metrics_reject_bad_inputs():
    with pytest.raises(FPNError, match="shapes differ"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(FPNError, match="spacing"):
        hd95(square(), square(), (1.0,))


# ----------------------------------------------------------------------------- folders
REF_SP = (0.12, 0.01)


def make_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases: refs .nii.gz with spacing REF_SP, preds .png (spacing 1, 1: must be ignored)."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    write_image(ref_dir / "c1.nii.gz", square(), REF_SP)
    write_image(pred_dir / "c1.png", square(left=4), (1.0, 1.0))  # Dice 0.5
    write_image(ref_dir / "c2.nii.gz", square(), REF_SP)
    write_image(pred_dir / "c2.png", square(), (1.0, 1.0))  # perfect
    write_image(ref_dir / "c3.nii.gz", square(), REF_SP)
    write_image(pred_dir / "c3.png", np.zeros((10, 10), np.uint8), (1.0, 1.0))  # missed: HD95 NaN
    return ref_dir, pred_dir


def test_evaluate_folders_summary_and_csv(tmp_path):
    ref_dir, pred_dir = make_folders(tmp_path)
    write_image(pred_dir / "extra.png", square(), (1.0, 1.0))
    with pytest.warns(UserWarning, match="extra.png"):
        s = evaluate_folders(ref_dir, pred_dir, {"background": 0, "GA": 1})

    on_disk = json.loads((pred_dir / "summary.json").read_text())
    assert set(on_disk) >= {"metric_per_case", "mean", "foreground_mean", "labels", "num_cases", "nan_count"}
    assert on_disk["num_cases"] == 3
    assert [Path(e["prediction_file"]).name for e in on_disk["metric_per_case"]] == ["c1.png", "c2.png", "c3.png"]
    assert Path(on_disk["metric_per_case"][0]["reference_file"]).name == "c1.nii.gz"
    assert [e["metrics"]["1"]["Dice"] for e in on_disk["metric_per_case"]] == pytest.approx([0.5, 1.0, 0.0])
    assert on_disk["metric_per_case"][2]["metrics"]["1"]["HD95"] is None  # NaN written as null
    assert on_disk["mean"]["1"]["Dice"] == pytest.approx(0.5)
    # HD95 mean over the two finite cases only: c1 shifted 2 A-scans (0.02 mm), c2 0
    assert on_disk["mean"]["1"]["HD95"] == pytest.approx(0.01)
    assert on_disk["nan_count"]["1"]["HD95"] == 1
    assert on_disk["foreground_mean"]["Dice"] == pytest.approx(0.5)
    assert [Path(p).name for p in on_disk["ignored_predictions"]] == ["extra.png"]
    # spacing from the reference, not the PNG
    px = REF_SP[0] * REF_SP[1]
    assert on_disk["metric_per_case"][0]["metrics"]["1"]["ref_area_mm2"] == pytest.approx(16 * px)
    assert on_disk["mean"]["1"]["area_abs_error_mm2"] == pytest.approx(16 * px / 3)
    assert s["mean"]["1"]["Dice"] == pytest.approx(0.5)

    df = pd.read_csv(pred_dir / "summary_per_case.csv")
    assert tuple(df.columns) == CSV_COLUMNS
    assert list(df["case"]) == ["c1", "c2", "c3"] and set(df["class"]) == {"GA"}
    assert df["dice"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert np.isnan(df["hd95_mm"].iloc[2])
    assert df["pred_area_mm2"].tolist() == pytest.approx([16 * px, 16 * px, 0.0])


def test_evaluate_folders_infers_labels_and_custom_output(tmp_path):
    ref_dir, pred_dir = tmp_path / "r", tmp_path / "p"
    ref = square((8, 8), 0, 0, 3, value=1)
    ref[6:8, 6:8] = 2
    pred = ref.copy()
    pred[7, 0] = 4  # a value only in the prediction is a class too
    write_image(ref_dir / "a.nii.gz", ref, (1.0, 1.0))
    write_image(pred_dir / "a.nii.gz", pred, (1.0, 1.0))
    out = tmp_path / "out" / "eval.json"
    s = evaluate_folders(ref_dir, pred_dir, None, output_file=out)
    assert s["labels"] == {"background": 0, "1": 1, "2": 2, "4": 4}
    assert set(s["mean"]) == {"1", "2", "4"}
    assert s["mean"]["1"]["Dice"] == 1.0 and s["mean"]["4"]["Dice"] == 0.0
    assert out.is_file() and (tmp_path / "out" / "eval_per_case.csv").is_file()
    assert not (pred_dir / "summary.json").exists()


def test_evaluate_folders_parallel_matches_serial(tmp_path):
    ref_dir, pred_dir = make_folders(tmp_path)
    serial = evaluate_folders(ref_dir, pred_dir, {"background": 0, "GA": 1}, write=False)
    parallel = evaluate_folders(ref_dir, pred_dir, {"background": 0, "GA": 1}, num_processes=2, write=False)
    assert json.dumps(serial["metric_per_case"]) == json.dumps(parallel["metric_per_case"])


def test_missing_prediction_names_the_case(tmp_path):
    ref_dir, pred_dir = make_folders(tmp_path)
    (pred_dir / "c2.png").unlink()
    with pytest.raises(FPNError, match="c2"):
        evaluate_folders(ref_dir, pred_dir, {"background": 0, "GA": 1})


def test_shape_mismatch_names_both_files(tmp_path):
    ref_dir, pred_dir = tmp_path / "r", tmp_path / "p"
    write_image(ref_dir / "a.nii.gz", square(), (1.0, 1.0))
    write_image(pred_dir / "a.nii.gz", square((10, 12)), (1.0, 1.0))
    with pytest.raises(FPNError) as exc:
        evaluate_folders(ref_dir, pred_dir, {"background": 0, "GA": 1})
    assert str(ref_dir / "a.nii.gz") in str(exc.value) and str(pred_dir / "a.nii.gz") in str(exc.value)


def test_read_label_map_squeezes_and_rejects(tmp_path):
    write_image(tmp_path / "s.nii.gz", square()[None], (9.0, 0.12, 0.01))
    arr, sp = read_label_map(tmp_path / "s.nii.gz")
    assert arr.shape == (10, 10) and sp == pytest.approx((0.12, 0.01))
    write_image(tmp_path / "f.nii.gz", np.full((4, 4), 0.5, np.float32), (1.0, 1.0))
    with pytest.raises(FPNError, match="f.nii.gz.*integer"):
        read_label_map(tmp_path / "f.nii.gz")


# ----------------------------------------------------------------------------- CLI
def make_raw(root: Path, cases: dict[str, np.ndarray]) -> Path:
    raw = root / "raw" / "Dataset901_Eval"
    save_json({"name": "Eval", "channel_names": {"0": "OCT"}, "labels": {"background": 0, "GA": 1},
               "file_ending": ".nii.gz"}, raw / "dataset.json")
    for case, lab in cases.items():
        write_image(raw / "labelsTr" / f"{case}.nii.gz", lab, REF_SP)
    return raw


def test_cli_ref_pred(tmp_path, monkeypatch, capsys):
    ref_dir, pred_dir = make_folders(tmp_path)
    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("FPN_PREPROCESSED", str(tmp_path / "pre"))
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "res"))
    make_raw(tmp_path, {})
    assert main(["-r", str(ref_dir), "-p", str(pred_dir), "-d", "901"]) == 0
    out = capsys.readouterr().out
    assert "GA (1)" in out and "0.5000" in out and "3 case(s)" in out
    s = json.loads((pred_dir / "summary.json").read_text())
    assert s["labels"] == {"background": 0, "GA": 1}
    assert (pred_dir / "summary_per_case.csv").is_file()

    with pytest.raises(SystemExit) as exc:
        main(["-r", str(ref_dir)])
    assert exc.value.code == 1
    assert "-p PRED_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-r", str(ref_dir), "-p", str(pred_dir), "--model", "x"])
    assert "only apply with --crossval" in capsys.readouterr().err


def test_cli_crossval(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("FPN_PREPROCESSED", str(tmp_path / "pre"))
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "res"))
    make_raw(tmp_path, {"a": square(), "b": square(), "c": square()})
    model = tmp_path / "res" / "Dataset901_Eval" / "fpn__lf1.0__scratch"
    write_image(model / "fold_0" / "validation" / "a.nii.gz", square(), (1.0, 1.0))
    save_json({"stale": True}, model / "fold_0" / "validation" / "summary.json")
    write_image(model / "fold_1" / "validation" / "b.nii.gz", square(left=4), (1.0, 1.0))
    write_image(model / "fold_1" / "validation" / "c.nii.gz", square(), (1.0, 1.0))
    (tmp_path / "res" / "Dataset901_Eval" / "pretrain__fpn__FAF" / "fold_all").mkdir(parents=True)

    assert main(["--crossval", "-d", "901", "--folds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "cross-validation of fpn__lf1.0__scratch" in out
    cv = model / "crossval_results"
    assert sorted(p.name for p in cv.iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "overlays", "summary.json",
                                                  "summary_per_case.csv"]
    assert sorted(p.name for p in (cv / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]
    s = json.loads((cv / "summary.json").read_text())
    assert s["num_cases"] == 3
    assert s["mean"]["1"]["Dice"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert s["crossval"]["case_fold"] == {"a": 0, "b": 1, "c": 1}
    assert Path(s["metric_per_case"][0]["reference_file"]).parent.name == "labelsTr"

    # a fold folder that does not exist is named
    with pytest.raises(SystemExit):
        main(["--crossval", "-d", "901", "--folds", "0", "1", "2"])
    assert "fold_2" in capsys.readouterr().err

    # two model folders: --model is required and the error lists them
    write_image(tmp_path / "res" / "Dataset901_Eval" / "fpn__lf0.05__scratch" / "fold_0" / "validation" / "a.nii.gz",
                square(), (1.0, 1.0))
    with pytest.raises(FPNError, match="fpn__lf0.05__scratch, fpn__lf1.0__scratch"):
        evaluate_crossval("901", folds=[0])
    with pytest.warns(UserWarning, match="2 labelled case"):
        s2 = evaluate_crossval("Dataset901_Eval", model="fpn__lf0.05__scratch", folds=[0])
    assert s2["num_cases"] == 1 and s2["crossval"]["cases_without_prediction"] == ["b", "c"]
