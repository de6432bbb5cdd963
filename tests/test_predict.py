"""Model folders and fpn_predict: loading folds and checkpoints, geometry of the written masks, bad inputs."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from inference_nets import DEPTH  # also registers the '_inference_test_column' network

from fpnunet.atomic import save_json
from fpnunet.commands.predict import main as predict_main
from fpnunet.errors import FPNError
from fpnunet.inference.predictor import Predictor
from fpnunet.io import read_image, write_image
from fpnunet.networks import build_network
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan


# ----------------------------------------------------------------------------- model folders
def _make_model_folder(
    root: Path, *, channels: int = 1, labels: dict[str, int] | None = None, folds: int = 2,
    projection_axis: int = 1, network: str = "_inference_test_column", kwargs: dict | None = None,
    patch: tuple[int, int] = (8, 32), depth: int = DEPTH, name: str = "colnet__lf1.0__scratch",
) -> Path:
    labels = labels or {"background": 0, "GA": 1}
    kwargs = {"hidden": 4} if kwargs is None else kwargs
    model_dir = root / name
    config = Configuration(network=NetworkSpec(network, kwargs), patch_size=patch, batch_size=2, depth=depth,
                           data_identifier=f"depth{depth}", precision="fp32")
    plan = Plan(dataset_name="Dataset999_Test", projection_axis=projection_axis, num_input_channels=channels,
                labels=labels, file_ending=".nii.gz", depth_crop=0,
                configurations={"colnet": config}, default_configuration="colnet")
    model_dir.mkdir(parents=True)
    plan.save(model_dir / "plans.json")
    save_json({"name": "Test", "channel_names": {str(i): f"ch{i}" for i in range(channels)}, "labels": labels,
               "file_ending": ".nii.gz"}, model_dir / "dataset.json")
    k = plan.num_outputs
    for fold in range(folds):
        torch.manual_seed(100 + fold)
        net = build_network(network, channels, k, **kwargs)
        for ckpt_name, scale in (("final", 1.0), ("best", -1.0)):
            state = {n: t * scale for n, t in net.state_dict().items()}
            (model_dir / f"fold_{fold}").mkdir(exist_ok=True)
            torch.save({"network": {"name": network, "kwargs": kwargs}, "in_channels": channels, "num_outputs": k,
                        "configuration": "colnet", "state_dict": state, "epoch": 1},
                       model_dir / f"fold_{fold}" / f"checkpoint_{ckpt_name}.pth")
    return model_dir


def _volume_file(path: Path, shape=(10, 24, 40), spacing=(0.12, 0.0039, 0.0113), origin=(1.5, -2.0, 3.25),
                 seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=shape).astype(np.float32)
    arr[:, shape[1] // 3 : 2 * shape[1] // 3] += 3.0  # a bright "retina" band (if depth is axis 1)
    write_image(path, arr, spacing, origin)


def test_from_model_folder_loads_folds_and_checkpoints(tmp_path):
    model_dir = _make_model_folder(tmp_path, folds=2)
    pred = Predictor.from_model_folder(model_dir, device="cpu")
    assert len(pred.networks) == 2 and pred.folds == ["0", "1"] and pred.precision == "fp32"
    volume = np.random.default_rng(0).normal(size=(1, 12, DEPTH, 40)).astype(np.float32)
    probs = pred.predict_preprocessed(volume)
    assert probs.shape == (1, 12, 40) and probs.dtype == np.float32

    singles = [Predictor.from_model_folder(model_dir, folds=[f], device="cpu").predict_preprocessed(volume)
               for f in (0, 1)]
    np.testing.assert_allclose(probs, (singles[0] + singles[1]) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0], singles[1])
    best = Predictor.from_model_folder(model_dir, folds=[0], checkpoint="best", device="cpu")
    assert not np.allclose(best.predict_preprocessed(volume), singles[0])

    with pytest.raises(FPNError, match="fold_3"):
        Predictor.from_model_folder(model_dir, folds=[3])
    (model_dir / "fold_1" / "checkpoint_best.pth").unlink()
    with pytest.raises(FPNError, match=r"fold_1.checkpoint_best\.pth"):
        Predictor.from_model_folder(model_dir, checkpoint="best")
    with pytest.raises(FPNError, match="depth=16"):
        pred.predict_preprocessed(volume[:, :, :8])


def _run(argv: list[str]) -> int:
    try:
        return predict_main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("ending", [".nii.gz", ".mha", ".png"])
def test_predictions_keep_enface_geometry(tmp_path, ending):
    model_dir = _make_model_folder(tmp_path / "results", folds=1)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _volume_file(in_dir / "caseA_0000.nii.gz", seed=1)
    _volume_file(in_dir / "caseB_0000.mha", shape=(7, 30, 50), spacing=(0.2, 0.004, 0.01), origin=(0, 1, 2), seed=2)
    assert _run(["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--file-ending", ending,
                 "--device", "cpu", "--save-probabilities"]) == 0
    for case, shape, spacing, origin in (("caseA", (10, 40), (0.12, 0.0113), (1.5, 3.25)),
                                         ("caseB", (7, 50), (0.2, 0.01), (0.0, 2.0))):
        img = read_image(out_dir / f"{case}{ending}")
        assert img.array.shape == shape
        assert set(np.unique(img.array)) <= {0, 1}
        np.testing.assert_allclose(img.spacing, spacing, rtol=1e-5)
        if ending != ".png":  # PNG keeps no origin
            np.testing.assert_allclose(img.origin, origin, rtol=1e-5, atol=1e-6)
        with np.load(out_dir / f"{case}.npz") as z:
            probs = z["probabilities"]
        assert probs.shape == (1, *shape)
        np.testing.assert_array_equal(img.array, (probs[0] > 0.5).astype(np.uint8))
    areas = pd.read_csv(out_dir / "lesion_areas.csv")
    assert list(areas.columns) == ["case", "patient", "eye", "visit", "class", "area_mm2", "sqrt_area_mm", "lesions",
                                   "focality", "qc", "qc_by", "qc_score", "area_low_mm2", "area_high_mm2",
                                   "disagreement", "entropy", "near_miss", "fold_disagreement"]
    assert set(areas["qc_by"]) == {"near_miss"}  # no calibration.json: the default score
    assert set(areas["qc"]) <= {"ok", "check"}
    assert (areas["area_low_mm2"] <= areas["area_mm2"] + 1e-9).all()
    assert (areas["area_mm2"] <= areas["area_high_mm2"] + 1e-9).all()
    assert areas["patient"].isna().all()  # the model's dataset.json names no patients: none are written
    assert sorted(areas["case"]) == ["caseA", "caseB"] and set(areas["class"]) == {"GA"}
    a = read_image(out_dir / f"caseA{ending}").array
    assert float(areas.set_index("case").loc["caseA", "area_mm2"]) == pytest.approx(a.sum() * 0.12 * 0.0113)


def test_projection_axis_other_than_one(tmp_path):
    """A plan whose volumes store depth last, (B, A, D): the output is on the (B, A) grid."""
    model_dir = _make_model_folder(tmp_path / "results", folds=1, projection_axis=2)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    arr = np.random.default_rng(0).normal(size=(9, 33, 24)).astype(np.float32)
    write_image(in_dir / "c_0000.nii.gz", arr, (0.1, 0.02, 0.004), (5.0, 6.0, 7.0))
    assert _run(["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu"]) == 0
    img = read_image(out_dir / "c.nii.gz")
    assert img.array.shape == (9, 33)
    np.testing.assert_allclose(img.spacing, (0.1, 0.02), rtol=1e-6)
    # numpy axis 2 (depth) is SimpleITK axis 0: the en-face origin keeps SimpleITK axes 1, 2
    np.testing.assert_allclose(img.origin, (6.0, 7.0))


def test_predict_raw_matches_cli_output(tmp_path):
    model_dir = _make_model_folder(tmp_path / "results", folds=2)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _volume_file(in_dir / "c_0000.nii.gz", seed=4)
    assert _run(["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu",
                 "--save-probabilities", "--disable-tta"]) == 0
    pred = Predictor.from_model_folder(model_dir, device="cpu", tta=False)
    raw = read_image(in_dir / "c_0000.nii.gz").array
    probs, props = pred.predict_raw([raw])
    assert probs.shape == (1, 10, 40) and "crop" in props and "retina_band" in props
    with np.load(out_dir / "c.npz") as z:
        np.testing.assert_allclose(z["probabilities"], probs, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_reported_and_others_still_written(tmp_path, capsys):
    model_dir = _make_model_folder(tmp_path / "results", channels=2, folds=1)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for case in ("good1", "good2"):
        for ch in (0, 1):
            _volume_file(in_dir / f"{case}_{ch:04d}.nii.gz", seed=ch)
    (in_dir / "garbage_0000.nii.gz").write_bytes(b"this is not an image")
    _volume_file(in_dir / "garbage_0001.nii.gz")
    write_image(in_dir / "flat_0000.nii.gz", np.zeros((10, 40), np.float32), (0.1, 0.01))
    _volume_file(in_dir / "flat_0001.nii.gz")
    _volume_file(in_dir / "thin_0000.nii.gz", shape=(10, 2, 40))
    _volume_file(in_dir / "thin_0001.nii.gz", shape=(10, 2, 40))
    _volume_file(in_dir / "nosuffix.nii.gz")
    _volume_file(in_dir / "half_0000.nii.gz")
    (in_dir / "notes.txt").write_text("not an image")
    _volume_file(in_dir / "cut_0000.nii.gz")  # an interrupted copy: SimpleITK would zero-fill it
    _volume_file(in_dir / "cut_0001.nii.gz")
    whole = gzip.decompress((in_dir / "cut_0000.nii.gz").read_bytes())
    (in_dir / "cut_0000.nii.gz").write_bytes(gzip.compress(whole[: len(whole) - 400]))
    nan = np.random.default_rng(0).normal(size=(10, 24, 40)).astype(np.float32)
    nan[3, 4, 5] = np.nan  # SimpleITK would read it as 0
    write_image(in_dir / "nan_0000.nii.gz", nan, (0.12, 0.0039, 0.0113))
    _volume_file(in_dir / "nan_0001.nii.gz")

    rc = _run(["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "garbage_0000.nii.gz" in err and "corrupt" in err
    assert "cut_0000.nii.gz: file is truncated" in err
    assert "nan_0000.nii.gz: the volume has 1 NaN/Inf value(s)" in err
    assert "flat_0000.nii.gz" in err and "3D" in err
    assert "thin_0000.nii.gz" in err and "depth 2" in err
    assert "nosuffix.nii.gz" in err and "_0000" in err
    assert "half_0001.nii.gz" in err and "missing" in err
    assert "notes.txt" in err and "ignored" in err
    assert "7 of 9 input(s) failed" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["failed_cases.csv", "good1.nii.gz", "good2.nii.gz",
                                                         "lesion_areas.csv"]
    assert sorted(pd.read_csv(out_dir / "lesion_areas.csv")["case"]) == ["good1", "good2"]
    failed = pd.read_csv(out_dir / "failed_cases.csv", dtype=str, keep_default_na=False).set_index("case")["error"]
    assert len(failed) == 7 and "file is truncated" in failed["cut"] and "NaN/Inf" in failed["nan"]


def test_model_folder_from_results_by_dataset(tmp_path, monkeypatch):
    results = tmp_path / "results" / "Dataset999_Test"
    _make_model_folder(results, folds=1, name="fpn__lf1.0__scratch")
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "results"))
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    _volume_file(in_dir / "c_0000.nii.gz")
    assert _run(["-i", str(in_dir), "-o", str(tmp_path / "o1"), "-d", "999", "--device", "cpu"]) == 0
    assert (tmp_path / "o1" / "c.nii.gz").is_file()

    _make_model_folder(results, folds=1, name="fpn__lf0.05__ssl-FAF")
    with pytest.raises(FPNError, match="several model folders"):
        from fpnunet.commands.predict import find_model_folder

        find_model_folder("999", None, "fpn")
    assert _run(["-i", str(in_dir), "-o", str(tmp_path / "o2"), "-d", "Dataset999_Test",
                 "--model", "fpn__lf0.05__ssl-FAF", "--device", "cpu", "-f", "0"]) == 0
    assert (tmp_path / "o2" / "c.nii.gz").is_file()
    assert _run(["-i", str(in_dir), "-o", str(tmp_path / "o3"), "-d", "999"]) == 1


def test_real_fpn_model_folder(tmp_path):
    """The registry's FPN, planned for patch (8, 32) at depth 64, end to end through fpn_predict."""
    from fpnunet.networks import network_class

    kwargs = network_class("fpn").plan_kwargs((8, 32), 64)
    model_dir = _make_model_folder(tmp_path / "results", folds=1, network="fpn", kwargs=kwargs, depth=64,
                                   labels={"background": 0, "GA": 1, "drusen": 2})
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _volume_file(in_dir / "c_0000.nii.gz", shape=(6, 40, 40))
    assert _run(["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu",
                 "--save-probabilities"]) == 0
    seg = read_image(out_dir / "c.nii.gz").array
    assert seg.shape == (6, 40) and set(np.unique(seg)) <= {0, 1, 2}
    with np.load(out_dir / "c.npz") as z:
        probs = z["probabilities"]
    assert probs.shape == (3, 6, 40)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    assert sitk.ReadImage(str(out_dir / "c.nii.gz")).GetSize() == (40, 6)


def test_inference_never_imports_training():
    import subprocess
    import sys

    code = ("import sys, fpnunet.inference, fpnunet.commands.predict; "
            "bad = [m for m in sys.modules if m.startswith('fpnunet.training')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
