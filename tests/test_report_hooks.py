"""Pictures where the stages write: fpn_predict --overlays/--report, fpn_evaluate, progress.png."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_predict import _make_model_folder, _volume_file
from test_report import _Collect, _run

from fpnunet.calibration_file import Calibration, write_calibration
from fpnunet.commands.evaluate import main as evaluate_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.report import main as report_main
from fpnunet.io import write_image
from fpnunet.training.logger import TrainingLogger, default_title, progress_figure, redraw_progress


def test_predict_overlays_report_and_patient_columns(tmp_path):
    model_dir = _make_model_folder(tmp_path / "results" / "Dataset999_Test", folds=1)
    write_calibration(model_dir, Calibration(qc_threshold=1.0))  # rows "ok" below: an untrained model's flag pinned
    ds = json.loads((model_dir / "dataset.json").read_text())
    ds["visits"] = {"good1": {"patient": "PS-1", "eye": "OD", "date": "2024-05-06"}}
    (model_dir / "dataset.json").write_text(json.dumps(ds))
    in_dir, out_dir = tmp_path / "imagesTs", tmp_path / "out"
    in_dir.mkdir()
    _volume_file(in_dir / "good1_0000.nii.gz", seed=1)
    _volume_file(in_dir / "good2_0000.nii.gz", seed=2)
    (in_dir / "broken_0000.nii.gz").write_bytes(b"not an image")
    slo = np.random.default_rng(0).random((20, 80)).astype(np.float32)  # an SLO on a finer grid, same field
    write_image(tmp_path / "enfaceTs" / "good2_SLO.nii.gz", slo, (0.06, 0.00565))
    rc = _run(predict_main, ["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu",
                             "--overlays", "--report"])
    assert rc == 1  # the broken case
    pngs = sorted(p.name for p in (out_dir / "overlays").iterdir())
    assert pngs == ["good1.png", "good2.png"]
    b, a = 10, 40  # the volumes' en-face plane; spacing 0.12 x 0.0113 mm -> blocks of (11, 1) before zoom
    w, h = Image.open(out_dir / "overlays" / "good1.png").size
    assert w % a == 0 and (h - 40) % b == 0 and (h - 40) // b == 11 * (w // a)
    p = _Collect()
    p.feed((out_dir / "report.html").read_text())
    assert [r["class"] for r in p.rows] == ["failed", "ok", "ok"]
    assert "broken_0000.nii.gz" in "".join(p.rows[0]["text"])
    assert {i["alt"]: i["title"] for i in p.imgs if i.get("class") == "thumb"} == {
        "good1": "volume projection", "good2": "SLO"}  # the SLO beside the input folder wins
    assert "PS-1" in "".join(p.text)
    areas = pd.read_csv(out_dir / "lesion_areas.csv").set_index("case")
    assert areas.loc["good1", "patient"] == "PS-1" and areas.loc["good1", "visit"] == "2024-05-06"
    assert pd.isna(areas.loc["good2", "patient"])
    assert set(areas["focality"]) <= {"none", "unifocal", "multifocal"}
    assert (areas["sqrt_area_mm"] ** 2).to_numpy() == pytest.approx(areas["area_mm2"].to_numpy())
    failed = pd.read_csv(out_dir / "failed_cases.csv")  # written by fpn_predict, read by fpn_report
    assert list(failed.columns) == ["case", "error"] and list(failed["case"]) == ["broken"]
    assert "broken_0000.nii.gz" in failed["error"][0]
    assert _run(report_main, ["-p", str(out_dir), "-i", str(in_dir), "-o", str(tmp_path / "again.html")]) == 0
    p = _Collect()
    p.feed((tmp_path / "again.html").read_text())
    assert [r["class"] for r in p.rows] == ["failed", "ok", "ok"]
    assert "broken_0000.nii.gz" in "".join(p.rows[0]["text"])
    (in_dir / "broken_0000.nii.gz").unlink()  # nothing fails: the old table goes
    assert _run(predict_main, ["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu"]) == 0
    assert not (out_dir / "failed_cases.csv").exists()


@pytest.mark.parametrize("bad, why", [
    (np.full((8, 32), np.nan, np.float32), "NaN/Inf"),
    (np.full((8, 32), 0.5, np.float32), "non-integer"),
    (np.full((8, 32), 7, np.uint8), "label value 7 is not one of the dataset's labels"),
])
def test_report_and_evaluate_refuse_the_same_bad_mask(tmp_path, monkeypatch, capsys, bad, why):
    raw = tmp_path / "raw" / "Dataset952_Bad"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "OCT"}, "labels": {"background": 0, "GA": 1},
                                                  "file_ending": ".nii.gz"}))
    monkeypatch.setenv("FPN_RAW", str(raw.parent))
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    seg = np.zeros((8, 32), np.uint8)
    seg[2:6, 4:14] = 1
    write_image(ref / "c0.nii.gz", seg, (0.375, 0.1875))
    write_image(pred / "c0.nii.gz", bad, (0.375, 0.1875))
    capsys.readouterr()
    for main in (report_main, evaluate_main):
        assert _run(main, ["-r", str(ref), "-p", str(pred), "-d", "952"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and str(pred / "c0.nii.gz") in err[-1] and why in err[-1]
        assert "Traceback" not in "\n".join(err)
    assert not (pred / "report.html").exists() and not (pred / "summary.json").exists()


def test_evaluate_always_writes_overlays_with_both_outlines(tmp_path, capsys):
    ref, pred = tmp_path / "labelsTs", tmp_path / "pred"
    seg = np.zeros((8, 32), np.uint8)
    seg[2:6, 4:14] = 1
    write_image(ref / "c0.nii.gz", seg, (0.375, 0.1875))
    write_image(pred / "c0.nii.gz", np.roll(seg, 3, axis=1), (0.375, 0.1875))
    assert _run(evaluate_main, ["-r", str(ref), "-p", str(pred)]) == 0
    assert "overlays:" in capsys.readouterr().out
    rgb = np.asarray(Image.open(pred / "overlays" / "c0.png").convert("RGB"))
    assert np.all(rgb == (0, 255, 0), axis=-1).any() and np.all(rgb == (255, 48, 48), axis=-1).any()


@pytest.mark.real_plots  # progress.png drawn by matplotlib (tests/conftest.py)
def test_progress_png_title_final_validation_and_no_stretching(tmp_path):
    fold = tmp_path / "Dataset901_DemoGA" / "fpn__lf1__ssl-FAF" / "fold_0"
    log = TrainingLogger(fold, ("val_loss", "val_dice"), trainer="segmentation")
    for e, d in enumerate([0.9001, 0.9003, 0.9002], start=1):
        log.log({"epoch": e, "train_loss": 0.30 + 1e-4 * e, "val_loss": 0.3, "val_dice": d, "lr": 0.1,
                 "epoch_time_s": 1.0})
    title = default_title(fold, "segmentation")
    assert title == "Dataset901_DemoGA | fpn__lf1__ssl-FAF | fold_0 | trainer segmentation"
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text(json.dumps(
        {"foreground_mean": {"Dice": 0.9412}, "tta": True, "num_cases": 6, "checkpoint": "checkpoint_final.pth"}))
    assert redraw_progress(fold, "segmentation") == fold / "progress.png"
    df = pd.read_csv(fold / "training_log.csv")
    from fpnunet.training.logger import final_validation

    fig = progress_figure(df, ["val_loss", "val_dice"], default_title(fold, "segmentation"), final_validation(fold))
    ax_loss, ax_metric, _ = fig.axes
    lo, hi = ax_metric.get_ylim()
    assert hi - lo >= 0.2 - 1e-9 and 0 <= lo and hi <= 1 and lo < 0.9001 and hi > 0.9412
    assert ax_loss.get_ylim()[1] - ax_loss.get_ylim()[0] >= 0.25 * 0.3
    legend = [t.get_text() for t in ax_metric.get_legend().get_texts()]
    assert any("final validation (flip TTA, 6 cases): Dice 0.9412" in t for t in legend)
    assert fig._suptitle.get_text().startswith("Dataset901_DemoGA | fpn__lf1__ssl-FAF | fold_0")


def test_predict_checks_colours_before_writing(tmp_path, capsys):
    model_dir = _make_model_folder(tmp_path / "results", folds=1)
    ds = json.loads((model_dir / "dataset.json").read_text())
    ds["colors"] = {"GA": "no-such-colour"}
    (model_dir / "dataset.json").write_text(json.dumps(ds))
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _volume_file(in_dir / "a_0000.nii.gz")
    assert _run(predict_main, ["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu",
                               "--overlays"]) == 1
    assert "colors['GA']: 'no-such-colour' is not a colour" in capsys.readouterr().err
    assert not out_dir.exists()
