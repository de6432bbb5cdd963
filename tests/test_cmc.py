"""Trainer registry, loss/augmentation plan values, and the cmc trainer (CPU, tiny data).

The cmc model: losses give gradients to both branches on unlabelled rows, training resumes
exactly, the model folder round-trips into OCT-only and fused prediction (fpn_predict --fused),
and a missing en-face image is a one-line error naming the case.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fpnunet.atomic import save_json
from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.train import main, parse_args, train
from fpnunet.errors import FPNError
from fpnunet.io import EnfaceGeometry, write_image
from fpnunet.networks import available_networks, build_network, network_class
from fpnunet.networks.cmc import pack_enface
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan, TrainingDefaults
from fpnunet.plans.training_params import AugmentParams, LossParams
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.cmc.augment import MisalignEnface, shift_image
from fpnunet.training.cmc.losses import CMCLoss, coarse_agreement, prototype_contrastive, semantic_consistency
from fpnunet.training.losses import SegmentationLoss
from fpnunet.training.run_config import RunConfig
from fpnunet.training.trainer import TRAINERS

NAME = "Dataset931_CmcTiny"
SHAPE_BA = (8, 32)
DEPTH = 32
MODS = ["FAF", "SLO"]
SPACING = (0.12, 0.0113)


def tiny_kwargs() -> dict:
    kw = network_class("fpn").plan_kwargs(SHAPE_BA, DEPTH, (1.0, 1.0))
    kw["features"] = [4, 8, 16, 32][: len(kw["features"])]
    return kw


def tiny_cmc(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network("cmc", 1, 1, oct_kwargs=tiny_kwargs(), modalities=MODS, enface_features=(4, 8),
                         shared_channels=8)


# ----------------------------------------------------------------------------- losses
def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vol = torch.randn(n, 1, *SHAPE_BA[:1], DEPTH, SHAPE_BA[1], generator=g)
    enface = torch.rand(n, len(MODS), *SHAPE_BA, generator=g)
    return vol, enface


def _grad_norm(module: torch.nn.Module) -> float:
    return float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))


@pytest.mark.parametrize("term", ["all", "semantic", "contrastive", "agreement"])
def test_unlabelled_losses_give_gradients_to_both_branches(term):
    torch.set_num_threads(1)
    net = tiny_cmc().train()
    vol, enface = _batch()
    out = net(pack_enface(vol, enface))
    assert set(out) == {"fused", "oct", "enface", "feat_oct", "feat_enface"}
    if term == "all":
        zeros = torch.zeros(4, 1, *SHAPE_BA)
        loss, parts = CMCLoss(1, LossParams())(out, zeros, None, zeros, None, labelled=torch.zeros(4))
        assert "sup_fused" not in parts and parts["semantic"] > 0  # no labelled row: consistency only
    elif term == "semantic":
        loss = semantic_consistency(out["feat_oct"], out["feat_enface"])
    elif term == "contrastive":
        loss = prototype_contrastive(out["oct"], out["feat_oct"], out["enface"], out["feat_enface"])
    else:
        loss = coarse_agreement(out["oct"], out["fused"]) + coarse_agreement(out["enface"], out["fused"])
    assert float(loss.detach()) > 0
    loss.backward()
    assert _grad_norm(net.oct.encoder) > 0, "no gradient reaches the OCT branch"
    assert _grad_norm(net.enface) > 0, "no gradient reaches the en-face branch"


def test_semantic_consistency_ignores_a_shift_but_not_other_features():
    g = torch.Generator().manual_seed(1)
    feat = torch.rand(2, 6, 8, 32, generator=g)
    shifted = torch.roll(feat, shifts=(2, 5), dims=(2, 3))  # the same content, misregistered
    assert float(semantic_consistency(feat, shifted)) < 1e-6
    other = torch.rand(2, 6, 8, 32, generator=g) ** 4
    assert float(semantic_consistency(feat, other)) > 1e-3


def test_misalignment_moves_enface_and_its_label_together():
    img = np.zeros((1, 1, 16, 32), np.float32)
    img[0, 0, 6:10, 10:14] = 1.0
    moved = shift_image(img, (2.0, 3.0), order=0)
    assert np.array_equal(moved[0, 0, 8:12, 13:17], np.ones((4, 4))) and moved.sum() == 16
    params = AugmentParams(enface_shift_px=4, enface_rotation_deg=0, enface_scale=(1.0, 1.0))
    np.random.seed(3)
    d = MisalignEnface(params)(enface=img.copy(), target=img.copy(), mask=np.ones_like(img))
    def centre(a: np.ndarray) -> np.ndarray:
        return np.argwhere(a[0, 0] > 0.5).mean(0)

    assert np.abs(centre(d["enface"]) - centre(img)).max() > 0.5  # moved ...
    assert np.abs(centre(d["enface_target"]) - centre(d["enface"])).max() <= 0.5  # ... with its label
    assert d["enface_mask"].sum() < img.size  # the border that entered is not valid


# ----------------------------------------------------------------------------- plan values, registry
def test_old_plans_without_loss_and_augmentation_load_with_todays_values(tmp_path):
    config = Configuration(network=NetworkSpec("fpn", {}), patch_size=SHAPE_BA)
    d = Plan(dataset_name="X", configurations={"fpn": config}).to_dict()
    for c in d["configurations"].values():
        del c["loss"], c["augmentation"]
    (tmp_path / "plans.json").write_text(json.dumps(d))
    plan = Plan.load(tmp_path / "plans.json")
    assert plan.configuration().loss == LossParams() and plan.configuration().augmentation == AugmentParams()
    assert AugmentParams().scale == (0.85, 1.25) and AugmentParams().p_scale == 0.2  # the old fixed values
    plan.configuration().augmentation.scale = (0.9, 1.1)
    plan.configuration().loss.dice_weight = 0.0
    plan.save(tmp_path / "p2.json")
    again = Plan.load(tmp_path / "p2.json").configuration()
    assert again.augmentation.scale == (0.9, 1.1) and again.loss.dice_weight == 0.0
    d["configurations"]["fpn"]["loss"] = {"dice_wieght": 1.0}
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(FPNError, match="dice_wieght"):
        Plan.load(tmp_path / "bad.json")


def test_loss_weights_from_the_plan_change_the_loss():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).long()
    bce_only = SegmentationLoss.from_params(1, LossParams(dice_weight=0.0))(logits, target)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float()) / 2
    assert torch.allclose(bce_only, expected)
    assert torch.allclose(SegmentationLoss.from_params(1, LossParams())(logits, target),
                          SegmentationLoss(1)(logits, target))


def test_trainer_registry():
    assert TRAINERS.get("supervised").folder_suffix() == "" and TRAINERS.get("cmc").folder_suffix() == "__cmc"
    with pytest.raises(FPNError, match="registered: cmc, reconstruction, supervised"):
        TRAINERS.get("fixmatch")
    assert "cmc" not in available_networks()  # never planned on its own


def test_synthetic_dataset_writes_enface_test_images(tiny_raw_dataset):
    for case in ("SynthGA_T000", "SynthGA_T001"):
        for mod in MODS:
            assert (tiny_raw_dataset / "enfaceTs" / f"{case}_{mod}.nii.gz").is_file()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture()
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Preprocessed arrays of 6 labelled and 2 unlabelled cases with FAF and SLO; tiny FPN plan."""
    torch.set_num_threads(1)
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "preprocessed"), ("FPN_RESULTS", "results")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    raw, pre = tmp_path / "raw" / NAME, tmp_path / "preprocessed" / NAME
    data = pre / f"depth{DEPTH}"
    data.mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    ds = {"name": "CmcTiny", "channel_names": {"0": "OCT"}, "enface_modalities": MODS,
          "labels": {"background": 0, "GA": 1}, "file_ending": ".nii.gz", "projection_axis": "auto"}
    save_json(ds, raw / "dataset.json")
    save_json(ds, pre / "dataset.json")
    geometry = EnfaceGeometry(SHAPE_BA, SPACING, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    rng = np.random.default_rng(0)
    for i in range(8):
        case = f"cmc_{i:03d}"
        seg = np.zeros(SHAPE_BA, np.uint8)
        b0, a0 = rng.integers(0, 4), rng.integers(0, 20)
        seg[b0:b0 + 4, a0:a0 + 10] = 1
        vol = rng.normal(0, 0.3, (1, SHAPE_BA[0], DEPTH, SHAPE_BA[1])).astype(np.float32)
        vol[0, :, 10:20, :] += 2.0 * seg[:, None, :]
        np.save(data / f"{case}.npy", vol)
        np.save(data / f"{case}_FAF.npy", (1.0 - 0.8 * seg).astype(np.float32))
        np.save(data / f"{case}_SLO.npy", (0.5 + 0.3 * seg).astype(np.float32))
        labelled = i < 6
        if labelled:
            np.save(data / f"{case}_seg.npy", seg)
            write_image(raw / "labelsTr" / f"{case}.nii.gz", seg, SPACING)
        save_json({"case": case, "labelled": labelled, "enface": MODS, "geometry": geometry.to_dict(),
                   "class_locations": {"1": np.argwhere(seg == 1).tolist()} if labelled else {}},
                  data / f"{case}.json")
    config = Configuration(network=NetworkSpec("fpn", tiny_kwargs()), patch_size=SHAPE_BA, batch_size=2, depth=DEPTH,
                           data_identifier=f"depth{DEPTH}", precision="fp32",
                           training=TrainingDefaults(epochs=2, iterations_per_epoch=2, val_every=1, bn_recalibration=2))
    Plan(dataset_name=NAME, labels={"background": 0, "GA": 1}, enface_modalities=MODS, file_ending=".nii.gz",
         enface_spacing=SPACING, depth_crop=0, median_shape=(8, DEPTH, 32),
         configurations={"fpn": config}).save(pre / "plans.json")
    PreprocessedDataset(data).write_completion_record()
    return {"tmp": tmp_path, "raw": raw, "results": tmp_path / "results" / NAME}


class Stop(Exception):
    pass


def _stop_after_first_epoch(epoch: int, record: dict) -> None:
    if epoch == 1:
        raise Stop


def test_cmc_trains_resumes_exactly_and_predicts_oct_only_and_fused(dataset, monkeypatch, capsys):
    argv = ["931", "0", "-tr", "cmc", "--label-fraction", "0.5", "--no-progress"]
    main(argv)
    model_dir = dataset["results"] / "fpn__lf0.5__scratch__cmc"
    final = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    out = capsys.readouterr().out
    assert "trainer cmc" in out and "unlabelled" in out
    assert final["network"]["name"] == "cmc" and final["run_config"]["trainer"] == "cmc"
    # unlabelled: the 2 cases without labels and the labelled training cases beyond --label-fraction 0.5
    args = final["run_config"]
    assert {"cmc_006", "cmc_007"} <= set(args["unlabelled_cases"])
    assert not set(args["unlabelled_cases"]) & set(args["train_cases"] + args["val_cases"])
    assert RunConfig.load(model_dir / "fold_0").to_dict() == final["run_config"]

    # killed after epoch 1, continued: exactly the uninterrupted weights
    monkeypatch.setenv("FPN_RESULTS", str(dataset["tmp"] / "results_b"))
    with pytest.raises(Stop):
        train(parse_args(argv), argv, callbacks=(_stop_after_first_epoch,))
    main([*argv, "--continue"])
    resumed = load_checkpoint(dataset["tmp"] / "results_b" / NAME / model_dir.name / "fold_0" / "checkpoint_final.pth")
    for name, tensor in final["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert [r["train_loss"] for r in resumed["log"]] == [r["train_loss"] for r in final["log"]]

    # the model folder alone rebuilds the model: OCT-only by default, fused with --fused
    from fpnunet.commands.predict import main as predict_main
    from fpnunet.inference.fused import model_modalities, predict_fused
    from fpnunet.inference.predictor import Predictor

    predictor = Predictor.from_model_folder(model_dir, folds=[0], device="cpu", tta=False)
    assert model_modalities(predictor) == MODS
    vol = np.load(dataset["tmp"] / "preprocessed" / NAME / f"depth{DEPTH}" / "cmc_000.npy")
    enface = np.random.default_rng(0).random((2, *SHAPE_BA)).astype(np.float32)
    oct_only, fused = predictor.predict_preprocessed(vol), predict_fused(predictor, vol, enface)
    net = predictor.networks[0]
    with torch.no_grad():
        direct = torch.sigmoid(net.oct(torch.from_numpy(vol)[None]))[0].numpy()
    assert np.allclose(oct_only, direct, atol=1e-5)  # OCT-only = the OCT branch
    assert fused.shape == oct_only.shape and not np.allclose(fused, oct_only)

    images, enface_dir = dataset["tmp"] / "imagesTs", dataset["tmp"] / "enfaceTs"
    images.mkdir()
    enface_dir.mkdir()
    rng = np.random.default_rng(1)
    for case in ("new_a", "new_b"):
        arr = rng.normal(size=(8, 48, 32)).astype(np.float32)
        arr[:, 16:32] += 3.0
        write_image(images / f"{case}_0000.nii.gz", arr, (0.12, 0.004, 0.0113))
        write_image(enface_dir / f"{case}_FAF.nii.gz", rng.random(SHAPE_BA).astype(np.float32), SPACING)
    write_image(enface_dir / "new_a_SLO.nii.gz", rng.random(SHAPE_BA).astype(np.float32), SPACING)
    capsys.readouterr()
    common = ["-i", str(images), "-m", str(model_dir), "--disable-tta", "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        predict_main([*common, "-o", str(dataset["tmp"] / "fused_bad"), "--fused"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "new_b" in err[0] and "SLO" in err[0]
    assert not (dataset["tmp"] / "fused_bad").exists()  # nothing written
    write_image(enface_dir / "new_b_SLO.nii.gz", rng.random(SHAPE_BA).astype(np.float32), SPACING)
    assert predict_main([*common, "-o", str(dataset["tmp"] / "fused"), "--fused"]) == 0
    assert predict_main([*common, "-o", str(dataset["tmp"] / "oct")]) == 0
    for case in ("new_a", "new_b"):
        assert (dataset["tmp"] / "fused" / f"{case}.nii.gz").is_file()
        assert (dataset["tmp"] / "oct" / f"{case}.nii.gz").is_file()


def test_fused_needs_a_model_with_enface_inputs_and_bad_trainer_fails_first(dataset, capsys):
    with pytest.raises(SystemExit):
        main(["931", "0", "-tr", "nope"])
    assert "registered: cmc, reconstruction, supervised" in capsys.readouterr().err
    assert not dataset["results"].exists()  # validated before any folder is touched
