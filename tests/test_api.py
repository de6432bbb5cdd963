"""The stable Python API (fpnunet.inference.api): a folder or a package zip, an array or a file."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from test_predict import _make_model_folder, _volume_file

from fpnunet.commands.export_model import main as export_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.errors import FPNError
from fpnunet.inference.api import UNCERTAIN_BELOW, Prediction, load_model, quality
from fpnunet.io import read_image


def _ok(main, argv: list[str]) -> None:
    try:
        assert main(argv) == 0
    except SystemExit as exc:
        assert exc.code == 0


def test_folder_and_zip_give_what_fpn_predict_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("FPN_PREPROCESSED", str(tmp_path / "pre"))
    model_dir = _make_model_folder(tmp_path / "results", folds=2)
    package = tmp_path / "m.zip"
    _ok(export_main, ["-m", str(model_dir), "-o", str(package), "--licence", "internal"])
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _volume_file(in_dir / "c_0000.nii.gz", seed=3)
    _ok(predict_main, ["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu",
                       "--save-probabilities"])
    with np.load(out_dir / "c.npz") as z:
        cli_probs = z["probabilities"]
    cli_mask = read_image(out_dir / "c.nii.gz").array

    folder_model = load_model(model_dir, device="cpu")
    assert folder_model.card is None and folder_model.labels == {"background": 0, "GA": 1}
    zip_model = load_model(package, device="cpu")
    assert zip_model.card is not None and zip_model.card["licence"] == "internal"
    scratch = zip_model.predictor.model_dir
    assert scratch.is_dir()
    for model in (folder_model, zip_model):
        res = model.predict_file(in_dir / "c_0000.nii.gz")
        assert isinstance(res, Prediction)
        np.testing.assert_array_equal(res.probabilities, cli_probs)
        np.testing.assert_array_equal(res.mask, cli_mask)
        assert res.spacing == pytest.approx((0.12, 0.0113))
        assert res.areas["GA"] == pytest.approx(cli_mask.sum() * 0.12 * 0.0113)
        assert res.lesions["GA"]["area_mm2"] == pytest.approx(res.areas["GA"])
        assert 0.5 <= res.qc["mean_confidence"] <= 1 and 0 <= res.qc["uncertain_fraction"] <= 1
        assert res.qc["warnings"] == []  # the test model's card knows no spacings

    arr = read_image(in_dir / "c_0000.nii.gz").array
    res = folder_model.predict(arr, spacing=(0.12, 0.0039, 0.0113))
    np.testing.assert_array_equal(res.mask, cli_mask)
    np.testing.assert_allclose(res.probabilities, cli_probs, rtol=1e-6, atol=1e-7)
    with pytest.raises(FPNError, match="missing.nii.gz: file not found"):
        folder_model.predict_file(tmp_path / "missing.nii.gz")
    with pytest.raises(FPNError, match="expected a 3D OCT volume"):
        _volume_2d = tmp_path / "flat_0000.nii.gz"
        from fpnunet.io import write_image

        write_image(_volume_2d, np.zeros((8, 40), np.float32), (0.1, 0.01))
        folder_model.predict_file(_volume_2d)
    del zip_model, model
    gc.collect()
    assert not Path(scratch).exists()  # the zip's temporary install goes with the model


def test_quality_values():
    sure = np.zeros((1, 4, 4), np.float32)
    q = quality(sure)
    assert q == {"mean_confidence": 1.0, "uncertain_fraction": 0.0}
    half = np.full((1, 4, 4), 0.5, np.float32)
    assert quality(half)["uncertain_fraction"] == 1.0
    three = np.zeros((3, 2, 2), np.float32)
    three[0] = UNCERTAIN_BELOW + 0.1
    three[1] = 1 - UNCERTAIN_BELOW - 0.1
    assert quality(three) == pytest.approx({"mean_confidence": UNCERTAIN_BELOW + 0.1, "uncertain_fraction": 0.0})
