"""End to end on a tiny dataset: fpn_evaluate --crossval --calibrate writes calibration.json, fpn_predict
applies it and writes the QC columns, fpn_suggest_labels ranks the unlabelled cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_training import DEPTH, SHAPE_BA, dataset  # noqa: F401  the fixture

from fpnunet.atomic import save_json
from fpnunet.calibration_file import read_calibration
from fpnunet.commands.evaluate import main as evaluate_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.suggest_labels import main as suggest_main
from fpnunet.commands.train import main as train_main
from fpnunet.inference.ensemble_scores import apply_temperature
from fpnunet.io import EnfaceGeometry, write_image
from fpnunet.member_arrays import MemberArrays
from fpnunet.preprocessed_dataset import PreprocessedDataset


def _run(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture()
def trained(dataset, monkeypatch):  # noqa: F811
    """Folds 0 and 1 trained for one step each, and two unlabelled cases added to the preprocessed data."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for fold in ("0", "1"):
        assert _run(train_main, ["901", fold, "--epochs", "1", "--iterations-per-epoch", "1", "--device", "cpu",
                                 "--pretrained", "none", "--no-progress"]) == 0
    data = dataset["data"]
    rng = np.random.default_rng(5)
    geometry = EnfaceGeometry(SHAPE_BA, (0.12, 0.0113), (1.5, -2.0), (1.0, 0.0, 0.0, 1.0))
    for i in range(2):
        case = f"unlab_{i}"
        np.save(data / f"{case}.npy", rng.normal(0, 1, (1, SHAPE_BA[0], DEPTH, SHAPE_BA[1])).astype(np.float32))
        save_json({"case": case, "labelled": False, "enface": [], "geometry": geometry.to_dict(),
                   "retina_band": [0, DEPTH], "crop": [0, DEPTH]}, data / f"{case}.json")
    PreprocessedDataset(data).write_completion_record()
    return dataset


def test_calibrate_predict_and_suggest(trained, tmp_path, capsys):
    model = trained["results"] / "fpn__lf1__scratch"
    assert _run(evaluate_main, ["--crossval", "-d", "901", "-f", "0", "1", "--calibrate", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ECE" in out and "QC flag" in out
    cal = read_calibration(model)
    assert cal.calibrated and cal.temperature > 0 and cal.folds == [0, 1] and cal.cases >= 2
    per_case = pd.read_csv(model / "crossval_results" / "uncertainty_per_case.csv")
    assert set(per_case["qc"]) <= {"ok", "check"} and len(per_case) == cal.cases
    # every case's out-of-fold members are kept for rating scores later (one fold, flips, K, B, A)
    kept = MemberArrays(model / "crossval_results")
    for case in per_case["case"]:
        members = kept.read(case)
        assert members.ndim == 5 and members.shape[0] == 1 and members.shape[1] >= 2
        assert 0 <= members.min() and members.max() <= 1

    # fpn_predict applies the stored temperature to the probabilities (masks unchanged at 0.5)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    rng = np.random.default_rng(0)
    write_image(in_dir / "new_0000.nii.gz", rng.normal(0, 1, (SHAPE_BA[0], DEPTH, SHAPE_BA[1])).astype(np.float32),
                (0.12, 0.004, 0.0113))
    save_json({**cal.to_dict(), "temperature": 2.5}, model / "calibration.json")
    args = ["-i", str(in_dir), "-m", str(model), "--device", "cpu", "--save-probabilities"]
    assert _run(predict_main, [*args, "-o", str(tmp_path / "cal"), "--report"]) == 0
    assert "temperature 2.5" in capsys.readouterr().err
    assert _run(predict_main, [*args, "-o", str(tmp_path / "raw"), "--no-uncertainty"]) == 0
    raw = np.load(tmp_path / "raw" / "new.npz")["probabilities"]
    cal_probs = np.load(tmp_path / "cal" / "new.npz")["probabilities"]
    np.testing.assert_allclose(cal_probs, apply_temperature(raw, 2.5), rtol=1e-4, atol=1e-5)
    table = pd.read_csv(tmp_path / "cal" / "lesion_areas.csv")
    assert table.loc[0, "qc"] in ("ok", "check") and table.loc[0, "area_low_mm2"] <= table.loc[0, "area_high_mm2"]
    assert "qc" not in pd.read_csv(tmp_path / "raw" / "lesion_areas.csv").columns
    html = (tmp_path / "cal" / "report.html").read_text()
    assert "<th>QC</th>" in html and "area interval" in html

    # fpn_suggest_labels ranks the two unlabelled cases
    assert _run(suggest_main, ["-d", "901", "-o", str(tmp_path / "suggest"), "--device", "cpu"]) == 0
    ranked = pd.read_csv(tmp_path / "suggest" / "suggestions.csv")
    assert sorted(ranked["case"]) == ["unlab_0", "unlab_1"] and list(ranked["rank"]) == [1, 2]
    page = (tmp_path / "suggest" / "suggestions.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "unlab_0" in page


def test_suggest_labels_flags_are_checked_first(trained, tmp_path, capsys):
    out = tmp_path / "never"
    assert _run(suggest_main, ["-d", "901", "-o", str(out), "--diversity", "2"]) == 1
    assert "--diversity 2.0: must be in [0, 1]" in capsys.readouterr().err and not out.exists()
    assert _run(suggest_main, ["-d", "901", "-o", str(out), "-i", str(tmp_path / "missing")]) == 1
    assert "input folder not found" in capsys.readouterr().err and not out.exists()
