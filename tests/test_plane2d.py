"""``plane2d``: the en-face-input configuration planned as a 2D problem (projections of the volume +
z-scored en-face images into a 2D U-Net over the whole plane).

Shapes and the slab-means shortcut of training; the planned 2D topology; the cached slab means
and the loader that reads them; the 2D augmentation; the candidate; trained, validated and
predicted end to end on ``fpn_make_synthetic`` output (``fpn_predict`` reads ``enfaceTs``); a
missing en-face image is a one-line error.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_enface_inputs import (  # shared with the other network that takes en-face inputs
    _env,
    assert_reads_slo_faf,
    prepare,
)

from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks import build_network, network_class
from fpnunet.networks.cmc import pack_enface
from fpnunet.networks.registry import enface_inputs
from fpnunet.plans.candidates import DatasetFacts, propose_candidates
from fpnunet.plans.plan import Plan
from fpnunet.plans.training_params import AugmentParams
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.training.augment import AUGMENTATIONS
from fpnunet.training.data import EnfaceDataLoader
from fpnunet.training.run_config import RunConfig

NAME = "Dataset906_Plane2d"
MODS = ["SLO", "FAF"]
BASE = ["906", "0", "-c", "plane2d", "--device", "cpu", "--num-workers", "0", "--no-progress"]


# ----------------------------------------------------------------------------- the network
def test_planned_2d_topology_and_shapes():
    cls = network_class("plane2d")
    kw = cls.plan_kwargs((16, 96), 64, (0.2, 0.05))
    assert kw["slabs"] == 4 and kw["features"] == [32, 64, 128, 256, 512]
    assert kw["pooling"] == [[1, 2], [2, 2], [2, 2], [1, 2]]  # the finer A first (anisotropy rule); maps >= 4 px
    assert cls.input_divisors(**kw) == ((4, 4, 16), 4)
    assert cls.plan_kwargs((16, 96), 30)["slabs"] == 3  # the largest divisor of the depth up to 4
    torch.manual_seed(0)
    net = build_network("plane2d", 2, 3, **kw, enface_inputs=MODS).eval()
    assert enface_inputs(net) == MODS and net.config["enface_inputs"] == MODS
    assert net.encoder[0][0].in_channels == 2 * 5 + 2  # per channel: mean + 4 slabs; then SLO, FAF
    x = pack_enface(torch.randn(2, 2, 16, 8, 96), torch.rand(2, 2, 16, 96))
    assert_reads_slo_faf(net, x, (2, 3, 16, 96), torch.randn(1, 2, 16, 8, 96))
    with pytest.raises(ShapeError, match="D=6 is not divisible by 4"):
        net(torch.randn(1, 4, 16, 6, 96))
    with pytest.raises(FPNError, match="twice"):
        build_network("plane2d", 1, 1, **kw, enface_inputs=["SLO", "SLO"])
    old = build_network("plane2d", 1, 1, **kw, enface_channels=MODS)  # plans/checkpoints of the older spelling
    assert enface_inputs(old) == MODS


def test_slab_means_give_the_full_volumes_output_and_intensity_is_normalised():
    """Training feeds the ``slabs`` slab means instead of the volume: same input, same output. Each
    input channel is z-scored per sample, so an affine change of the en-face image changes nothing."""
    kw = network_class("plane2d").plan_kwargs((8, 32), 16)
    assert network_class("plane2d").training_slabs(**kw) == kw["slabs"] == 4
    assert network_class("fpn").training_slabs() is None
    torch.manual_seed(0)
    net = build_network("plane2d", 1, 1, **kw, enface_inputs=["FAF"]).eval()
    volume, faf = torch.randn(2, 1, 8, 16, 32), torch.rand(2, 1, 8, 32)
    slabs = volume.reshape(2, 1, 8, 4, 4, 32).mean(dim=4)
    with torch.no_grad():
        full = net(pack_enface(volume, faf))
        torch.testing.assert_close(net(pack_enface(slabs, faf)), full, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(net(pack_enface(volume, 3.0 * faf + 0.5)), full, rtol=1e-3, atol=1e-3)
        assert not torch.allclose(net(pack_enface(volume, faf ** 2)), full, atol=1e-3)


# ----------------------------------------------------------------------------- data and augmentation
def test_the_2d_augmentation_moves_enface_inputs_with_the_volume_and_packs_them():
    rng = np.random.default_rng(0)
    image = rng.random((4, 1, 24, 40)).astype(np.float32)
    batch = {"data": np.repeat(image[:, :, :, None, :], 4, axis=3), "target": (image > 0.5).astype(np.float32),
             "mask": np.ones_like(image), "enface": image.copy(), "aug_seed": np.arange(4, dtype=np.uint32)}
    params = AugmentParams(p_rotation=1.0, rotation_deg=30.0, p_scale=1.0, p_gamma=0.0, p_noise=0.0)
    out = AUGMENTATIONS.get("plane2d")((24, 40), params, "seg", True)(**batch)
    assert out["data"].shape == (4, 2, 24, 4, 40) and "enface" not in out
    assert not np.allclose(out["data"][:, 0, :, 0], image[:, 0])  # rotated / scaled
    np.testing.assert_allclose(out["data"][:, 1, :, 0], out["data"][:, 0, :, 0], atol=1e-6)
    assert out["mask"].min() == 0.0  # corners rotated in from outside the plane are masked out
    batch["aug_seed"] = np.arange(4, dtype=np.uint32)
    gamma = AUGMENTATIONS.get("plane2d")((24, 40), AugmentParams(p_rotation=0.0, p_scale=0.0, mirror_axes=(),
                                                                 p_gamma=1.0, p_noise=0.0), "seg", True)(**batch)
    assert not np.allclose(gamma["data"][:, 1, :, 0], image[:, 0], atol=1e-3)  # the en-face input gets intensity aug
    np.testing.assert_array_equal(gamma["target"], batch["target"])


# ----------------------------------------------------------------------------- the candidate
def test_candidate_listed_only_when_every_case_has_the_enface_images():
    every = DatasetFacts(("fpn", "plane2d"), ("FAF", "SLO"), {"FAF": 10, "SLO": 10}, every_case_has_enface=True)
    cands, _ = propose_candidates(every)
    by = {c.name: c for c in cands}
    assert by["plane2d-enface"].enface_inputs == ("FAF", "SLO") and "2D problem" in by["plane2d-enface"].reason
    assert "--enface-inputs" in by["plane2d-enface"].train_flags()
    assert by["plane2d-enface"].model_folder_name() == "plane2d__lf1__scratch__enf-FAF-SLO"
    some = DatasetFacts(("fpn", "plane2d"), ("FAF",), {"FAF": 3}, every_case_has_enface=False)
    cands, notes = propose_candidates(some)
    assert "plane2d-enface" not in {c.name for c in cands}
    assert any("no 2D en-face-input candidate: not every training and test case" in n for n in notes)
    _, notes = propose_candidates(DatasetFacts(("fpn",), ("FAF",), {"FAF": 3}, every_case_has_enface=True))
    assert any("add -c plane2d" in n for n in notes)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """``fpn_make_synthetic`` output (6 cases + 2 test cases with enfaceTs), planned for plane2d and
    preprocessed once; 1 epoch of 2 steps."""
    return prepare(tmp_path_factory.mktemp("plane2d"), NAME, "plane2d", also=("fpn",))


@pytest.fixture()
def env(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    torch.set_num_threads(1)
    _env(monkeypatch, prepared, tmp_path / "results")
    plan = Plan.load(prepared / "preprocessed" / NAME / "plans.json")
    data = prepared / "preprocessed" / NAME / plan.configuration("plane2d").data_identifier
    return {"raw": prepared / "raw" / NAME, "data": data, "results": tmp_path / "results" / NAME, "tmp": tmp_path,
            "plan": plan}


def test_planned_as_a_2d_problem_and_listed_as_a_candidate(env):
    cfg = env["plan"].configuration("plane2d")
    assert tuple(cfg.patch_size) == (8, 32)  # the whole en-face plane
    assert cfg.batch_size >= 2
    assert "plane2d-enface" in {c.name for c in env["plan"].candidates}


def test_slab_means_are_computed_once_and_read_by_the_loader(env):
    owner = PreprocessedDataset(env["data"])
    case = sorted(p.stem for p in env["data"].glob("*_seg.npy"))[0].removesuffix("_seg")
    path = owner.slab_means(case, 4)
    volume = np.load(owner.volume_file(case))
    np.testing.assert_allclose(np.load(path), volume.reshape(volume.shape[0], volume.shape[1], 4, -1,
                                                             volume.shape[3]).mean(axis=3), rtol=1e-5, atol=1e-6)
    stamp = path.stat().st_mtime_ns
    assert owner.slab_means(case, 4) == path and path.stat().st_mtime_ns == stamp  # not rewritten
    os.utime(owner.volume_file(case), ns=(stamp + 10**9, stamp + 10**9))  # a newer volume: recomputed
    owner.slab_means(case, 4)
    assert path.stat().st_mtime_ns > stamp
    loader = EnfaceDataLoader(env["data"], [case], (8, 32), 2, enface=MODS, slabs=4)
    assert loader.depth == 4 and loader.generate_train_batch()["data"].shape == (2, 1, 8, 4, 32)


def test_train_validate_and_predict_reading_enfacets(env, capsys):
    assert train_main([*BASE, "--enface-inputs", *MODS]) == 0
    model_dir = env["results"] / "plane2d__lf1__scratch__enf-SLO-FAF"
    ckpt = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    assert ckpt["network"]["kwargs"]["enface_inputs"] == MODS  # the model folder records what prediction reads
    config = RunConfig.load(model_dir / "fold_0")
    assert list(config.enface_inputs) == MODS and config.augmentation == "plane2d"
    assert np.isfinite(ckpt["log"][-1]["val_dice"])
    assert len(list((model_dir / "fold_0" / "validation").glob("*.nii.gz"))) == 2
    capsys.readouterr()

    out = env["tmp"] / "out"
    assert predict_main(["-i", str(env["raw"] / "imagesTs"), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
                         "--disable-tta"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 2

    # a missing en-face image at prediction: one line naming the case, nothing written
    other = env["tmp"] / "enface_missing"
    shutil.copytree(env["raw"] / "enfaceTs", other)
    next(iter(sorted(other.glob("*_SLO.nii.gz")))).unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        predict_main(["-i", str(env["raw"] / "imagesTs"), "-o", str(env["tmp"] / "bad"), "-m", str(model_dir),
                      "--device", "cpu", "--enface-dir", str(other)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no SLO image" in err[0]
    assert not (env["tmp"] / "bad").exists()


def test_missing_enface_image_in_training_is_one_line(env, capsys):
    case = sorted(p.name for p in env["data"].glob("*_FAF.npy"))[0]
    moved = env["tmp"] / case
    shutil.move(env["data"] / case, moved)
    try:
        with pytest.raises(SystemExit) as exc:
            train_main([*BASE, "--enface-inputs", *MODS])
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{case}: missing" in err[0]
        assert not (env["results"] / "plane2d__lf1__scratch__enf-SLO-FAF").exists()
    finally:
        shutil.move(moved, env["data"] / case)
