"""benchmarks/nnunet_projection.py without nnU-Net: the export to nnU-Net's raw format (values,
channels, labels, geometry), the folds and label fractions it hands nnU-Net, and the missing-script error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmark_modules import load_benchmark

from fpnunet.atomic import load_json, save_json
from fpnunet.errors import FPNError
from fpnunet.io import EnfaceGeometry, read_image
from fpnunet.plans.plan import Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.splits import apply_label_fraction, fold_cases

SHAPE_BA, DEPTH, SPACING = (6, 10), 8, (0.12, 0.0113)


def _module():
    return load_benchmark("nnunet_projection")


@pytest.fixture()
def preprocessed(data_roots) -> Path:
    pre = data_roots[1] / "Dataset905_Proj"
    data = pre / f"depth{DEPTH}"
    data.mkdir(parents=True)
    save_json({"name": "Proj", "channel_names": {"0": "OCT"}, "labels": {"background": 0, "GA": 1},
               "file_ending": ".nii.gz", "enface_modalities": ["FAF"]}, pre / "dataset.json")
    rng = np.random.default_rng(0)
    geometry = EnfaceGeometry(SHAPE_BA, SPACING, (1.0, 2.0), (1.0, 0.0, 0.0, 1.0))
    for i in range(10):
        case = f"p_{i:02d}"
        np.save(data / f"{case}.npy", rng.normal(size=(1, SHAPE_BA[0], DEPTH, SHAPE_BA[1])).astype(np.float32))
        np.save(data / f"{case}_seg.npy", (rng.random(SHAPE_BA) > 0.7).astype(np.uint8))
        np.save(data / f"{case}_FAF.npy", rng.random(SHAPE_BA).astype(np.float32))
        save_json({"case": case, "labelled": True, "enface": ["FAF"], "geometry": geometry.to_dict(),
                   "shape_bda": [SHAPE_BA[0], DEPTH, SHAPE_BA[1]]}, data / f"{case}.json")
    PreprocessedDataset(data).write_completion_record()
    Plan(dataset_name="Dataset905_Proj", labels={"background": 0, "GA": 1}, enface_modalities=["FAF"],
         enface_spacing=SPACING).save(pre / "plans.json")
    return pre


def test_export_and_folds_match_fpnunet(preprocessed, tmp_path):
    np_mod = _module()
    data = preprocessed / f"depth{DEPTH}"
    runs = np_mod.fold_plan(preprocessed, data, "Dataset905_Proj", [0, 1], [0.3, 1.0])
    splits = load_json(preprocessed / "splits_final.json")  # written like fpn_train writes it
    assert [(f, k) for f, k, _, _ in runs] == [(0.3, 0), (0.3, 1), (1.0, 0), (1.0, 1)]
    for fraction, fold, train, val in runs:
        ours_train, ours_val = fold_cases(splits, fold)
        assert train == apply_label_fraction(ours_train, fraction) and val == ours_val
        assert not set(train) & set(val)
    assert len(runs[0][2]) < len(runs[2][2])

    target = tmp_path / "Dataset700_ProjEnface"
    plan = Plan.load(preprocessed / "plans.json")
    np_mod.export_variant("proj+enface", target, data, ["p_00", "p_03"], plan)
    ds = load_json(target / "dataset.json")
    assert ds["channel_names"] == {"0": "OCT0_mean", "1": "FAF"} and ds["numTraining"] == 2
    assert ds["labels"] == {"background": 0, "GA": 1} and ds["file_ending"] == ".nii.gz"
    proj = read_image(target / "imagesTr" / "p_03_0000.nii.gz")
    np.testing.assert_allclose(proj.array, np.load(data / "p_03.npy")[0].mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proj.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(read_image(target / "imagesTr" / "p_03_0001.nii.gz").array,
                               np.load(data / "p_03_FAF.npy"), rtol=1e-6)
    np.testing.assert_array_equal(read_image(target / "labelsTr" / "p_03.nii.gz").array,
                                  np.load(data / "p_03_seg.npy"))
    np_mod.export_variant("proj", tmp_path / "plain", data, ["p_00"], plan)
    assert sorted(p.name for p in (tmp_path / "plain" / "imagesTr").iterdir()) == ["p_00_0000.nii.gz"]


def test_missing_nnunet_is_one_line(tmp_path):
    np_mod = _module()
    runner = np_mod.NNUNet(str(tmp_path / "nobin"), tmp_path / "work", tmp_path / "logs")
    with pytest.raises(FPNError) as info:
        runner.script("nnUNetv2_train")
    assert "\n" not in str(info.value) and "--nnunet-bin" in str(info.value)
    assert runner.env["nnUNet_raw"] == str(tmp_path / "work" / "nnUNet_raw")
