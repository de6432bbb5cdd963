"""omnia / dsnet / dxnet through the pipeline like the other networks: planned, trained with
``--encoder-weights PATH``, resumed exactly, and predicted from the model folder after the PATH is gone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fpnunet.atomic import save_json
from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main, parse_args, train
from fpnunet.io import EnfaceGeometry, read_image, write_image
from fpnunet.networks import network_class
from fpnunet.networks.encoders2d import ResNetEncoder
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan, TrainingDefaults
from fpnunet.plans.planner import plan_dataset
from fpnunet.plans.planning_rules import memory_budget_bytes
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.raw_dataset import DatasetInfo

NAME = "Dataset903_CrossDim"
SHAPE_BA = (8, 32)
DEPTH = 16
SPACING = (0.12, 0.0113)
NETWORKS = ("omnia", "dsnet", "dxnet")


@pytest.fixture()
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Preprocessed arrays of 6 labelled cases and a plan with the three networks (2 epochs x 2 steps)."""
    torch.set_num_threads(1)
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "preprocessed"), ("FPN_RESULTS", "results")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    pre = tmp_path / "preprocessed" / NAME
    data = pre / f"depth{DEPTH}"
    data.mkdir(parents=True)
    ds = {"name": "CrossDim", "channel_names": {"0": "OCT"}, "enface_modalities": [],
          "labels": {"background": 0, "GA": 1}, "file_ending": ".nii.gz", "projection_axis": "auto"}
    save_json(ds, pre / "dataset.json")
    geometry = EnfaceGeometry(SHAPE_BA, SPACING, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    rng = np.random.default_rng(0)
    for i in range(6):
        case = f"cd_{i:03d}"
        seg = np.zeros(SHAPE_BA, np.uint8)
        seg[rng.integers(0, 4):, rng.integers(0, 20):][:4, :10] = 1
        vol = rng.normal(0, 0.3, (1, SHAPE_BA[0], DEPTH, SHAPE_BA[1])).astype(np.float32)
        vol[0, :, 8:12, :] += 2.0 * seg[:, None, :]
        np.save(data / f"{case}.npy", vol)
        np.save(data / f"{case}_seg.npy", seg)
        save_json({"case": case, "labelled": True, "enface": [], "raw_shape": [8, DEPTH, 32],
                   "shape_bda": [8, DEPTH, 32], "spacing_bda": [SPACING[0], 0.004, SPACING[1]],
                   "geometry": geometry.to_dict(), "retina_band": [0, DEPTH], "crop": [0, DEPTH],
                   "class_locations": {"1": np.argwhere(seg == 1).tolist()}}, data / f"{case}.json")
    PreprocessedDataset(data).write_completion_record()
    configs = {
        name: Configuration(
            network=NetworkSpec(name, network_class(name).plan_kwargs(SHAPE_BA, DEPTH, SPACING)),
            patch_size=SHAPE_BA, batch_size=2, depth=DEPTH, data_identifier=f"depth{DEPTH}", precision="fp32",
            training=TrainingDefaults(epochs=2, iterations_per_epoch=2, val_every=2, bn_recalibration=2))
        for name in NETWORKS
    }
    Plan(dataset_name=NAME, labels={"background": 0, "GA": 1}, file_ending=".nii.gz", enface_spacing=SPACING,
         median_shape=(8, DEPTH, 32), configurations=configs, default_configuration="omnia").save(pre / "plans.json")
    torch.manual_seed(5)
    enc = ResNetEncoder((2, 2, 2, 2), in_chans=3, levels=3)
    weights = tmp_path / "weights" / "resnet18_imagenet.pth"
    weights.parent.mkdir()
    torch.save(enc.state_dict(), weights)
    return {"tmp": tmp_path, "results": tmp_path / "results" / NAME, "weights": weights}


def _predict(model_dir: Path, tmp: Path) -> np.ndarray:
    in_dir, out_dir = tmp / "pred_in", tmp / "pred_out"
    in_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    write_image(in_dir / "new_0000.nii.gz", rng.normal(size=(8, DEPTH, 32)).astype(np.float32),
                (0.12, 0.004, 0.0113), (0.0, 0.0, 0.0))
    assert predict_main(["-i", str(in_dir), "-o", str(out_dir), "-m", str(model_dir), "--device", "cpu",
                         "-f", "0", "--disable-tta"]) == 0
    return read_image(out_dir / "new.nii.gz").array


@pytest.mark.parametrize("name", ["omnia", "dsnet"])
def test_train_from_path_then_predict_without_it(dataset, name):
    assert main(["903", "0", "--network", name, "--encoder-weights", str(dataset["weights"])]) == 0
    model_dir = dataset["results"] / f"{name}__lf1__enc-resnet18-imagenet"
    record = json.loads((model_dir / "fold_0" / "pretrained_from.json").read_text())
    assert record["tag"] == "enc-resnet18-imagenet" and record["encoder_report"]["adapted"] == ["conv1.weight"]
    assert len(record["encoder_report"]["loaded"]) > 30 and not record["encoder_report"]["missing"]
    ckpt = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    assert ckpt["network"]["kwargs"] == network_class(name).plan_kwargs(SHAPE_BA, DEPTH, SPACING)
    assert not any("weights" in json.dumps(v) for v in ckpt["network"]["kwargs"].values())  # no PATH in the spec
    dataset["weights"].unlink()  # prediction needs only the model folder
    seg = _predict(model_dir, dataset["tmp"])
    assert seg.shape == SHAPE_BA and set(np.unique(seg)) <= {0, 1}


def test_dxnet_resumes_exactly_and_predicts_without_the_path(dataset, monkeypatch):
    class Stop(Exception):
        pass

    def stop_after_1(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise Stop

    argv = ["903", "0", "--network", "dxnet", "--encoder-weights", str(dataset["weights"])]
    main(argv)
    model_dir = dataset["results"] / "dxnet__lf1__enc-resnet18-imagenet"
    uninterrupted = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")

    monkeypatch.setenv("FPN_RESULTS", str(dataset["tmp"] / "results_b"))
    with pytest.raises(Stop):
        train(parse_args(argv), argv, callbacks=(stop_after_1,))
    dataset["weights"].unlink()  # resuming takes the weights from the checkpoint, not the PATH
    main([*argv, "--continue"])
    resumed = load_checkpoint(dataset["tmp"] / "results_b" / NAME / model_dir.name / "fold_0" / "checkpoint_final.pth")
    for key, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][key]), key
    seg = _predict(model_dir, dataset["tmp"])
    assert seg.shape == SHAPE_BA


def test_encoder_weights_flag_errors_touch_nothing(dataset, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["903", "0", "--network", "omnia", "--encoder-weights", str(dataset["tmp"] / "nope.pth")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no such file" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["903", "0", "--network", "omnia", "--encoder-weights", str(dataset["weights"]),
              "--pretrained", str(dataset["weights"])])
    assert "give one of them" in capsys.readouterr().err
    assert not dataset["results"].exists()


def test_planner_fits_the_three_networks():
    shape, spacing = (32, 160, 128), (0.1875, 0.011875, 0.046875)
    cases = {f"c{i}": {"shape": list(shape), "spacing": list(spacing), "retina_band": [20, 110], "labelled": True}
             for i in range(60)}
    fingerprint = {"dataset_name": "Dataset900_SynthGA", "projection_axis": 1, "median_shape": list(shape),
                   "median_spacing": list(spacing), "retina_band_height_p95": 90, "cases": cases, "num_labelled": 60}
    info = DatasetInfo("SynthGA", {"0": "OCT"}, {"background": 0, "GA": 1}, ".nii.gz", ["FAF"])
    plan = plan_dataset(fingerprint, info, gpu_memory_gb=8, networks=NETWORKS, verbose=False)
    for name in NETWORKS:
        cfg = plan.configurations[name]
        (d_b, d_d, d_a), min_depth = network_class(name).input_divisors(**cfg.network.kwargs)
        assert cfg.patch_size[0] % d_b == 0 and cfg.patch_size[1] % d_a == 0, name
        assert cfg.depth % d_d == 0 and cfg.depth >= min_depth, name
        assert 0 < cfg.memory.total_bytes <= memory_budget_bytes(8), name
        assert cfg.memory.activation_bytes > 0 and cfg.batch_size >= 2
    assert plan.configurations["omnia"].patch_size == (32, 128)
    small = plan_dataset(fingerprint, info, gpu_memory_gb=2, networks=("dxnet",), verbose=False)
    assert small.configurations["dxnet"].memory.total_bytes <= memory_budget_bytes(2)
