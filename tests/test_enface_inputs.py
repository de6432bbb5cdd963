"""Omnia-Net with the plan's en-face modalities as extra input channels (``fpn_train --enface-inputs``).

Shapes with and without them; the en-face images get the volume's spatial augmentation; the value
is resolved from the plan or the flag; trained, validated and predicted end to end on
``fpn_make_synthetic`` output (``fpn_predict`` reads ``enfaceTs``); a missing modality is a one-line
error naming the case; a model without them still predicts without ``enfaceTs``.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.plan_and_preprocess import main as preprocess_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks import build_network, network_class
from fpnunet.networks.cmc import pack_enface
from fpnunet.networks.registry import enface_inputs
from fpnunet.plans.plan import NetworkSpec, Plan
from fpnunet.plans.training_params import AugmentParams
from fpnunet.synthetic.dataset import make_synthetic_dataset
from fpnunet.training import enface_inputs as resolution
from fpnunet.training.augment import get_train_transforms
from fpnunet.training.data import EnfaceDataLoader
from fpnunet.training.pretrained import load_pretrained
from fpnunet.training.run_config import RunConfig

NAME = "Dataset905_EnfCh"
MODS = ["SLO", "FAF"]
BASE = ["905", "0", "-c", "omnia", "--device", "cpu", "--num-workers", "0", "--no-progress"]


# ----------------------------------------------------------------------------- the network
def test_omnia_shapes_with_and_without_enface_inputs():
    kw = network_class("omnia").plan_kwargs((8, 32), 16)
    assert kw["enface_inputs"] == []
    plain = build_network("omnia", 2, 1, **kw)
    torch.manual_seed(0)
    net = build_network("omnia", 2, 1, **{**kw, "enface_inputs": MODS}).eval()
    assert enface_inputs(plain) == [] and enface_inputs(net) == MODS and net.config["enface_inputs"] == MODS
    assert net.encoder.conv1.in_channels == 2 * kw["slabs"] + 2 == plain.encoder.conv1.in_channels + 2
    assert plain(torch.randn(2, 2, 8, 16, 32)).shape == (2, 1, 8, 32)
    x = torch.randn(2, 4, 8, 16, 32)
    x[:, 2:] = torch.rand(2, 2, 8, 1, 32)  # packed en-face images: constant along depth
    assert_reads_slo_faf(net, x, (2, 1, 8, 32), torch.randn(1, 2, 8, 16, 32))
    with pytest.raises(FPNError, match="twice"):
        build_network("omnia", 1, 1, **{**kw, "enface_inputs": ["SLO", "SLO"]})


def test_the_old_name_enface_channels_still_loads():
    """Plans, candidates and checkpoints written before the rename say ``enface_channels``."""
    from fpnunet.plans.candidates import Candidate
    from fpnunet.plans.plan import Configuration

    kw = network_class("omnia").plan_kwargs((8, 32), 16)
    old = {k: v for k, v in kw.items() if k != "enface_inputs"} | {"enface_channels": MODS}
    config = Configuration.from_dict({"network": {"name": "omnia", "kwargs": old}})
    assert config.network.kwargs["enface_inputs"] == MODS and "enface_channels" not in config.network.kwargs
    assert enface_inputs(build_network("omnia", 1, 1, **old)) == MODS  # a round-2 checkpoint's kwargs
    cand = Candidate.from_dict({"name": "omnia-enface", "config": "omnia", "enface_channels": ["SLO"]})
    assert cand.enface_inputs == ("SLO",)


def test_an_oct_only_pretraining_loads_with_zero_weights_for_the_enface_inputs(tmp_path):
    kw = network_class("omnia").plan_kwargs((8, 32), 16)
    torch.manual_seed(0)
    plain = build_network("omnia", 1, 1, **kw).eval()
    torch.save({k: v.detach().clone() for k, v in plain.state_dict().items()}, tmp_path / "oct_only.pth")
    net = build_network("omnia", 1, 1, **{**kw, "enface_inputs": MODS})
    report = load_pretrained(net, tmp_path / "oct_only.pth", verbose=False, network="omnia")
    assert report.num_loaded == report.total and not report.shape_mismatch
    volume = torch.randn(2, 1, 8, 16, 32)
    with torch.no_grad():
        expected = plain(volume)
        for enface in (torch.zeros(2, 2, 8, 32), torch.rand(2, 2, 8, 32)):  # starts as the pretrained network
            torch.testing.assert_close(net.eval()(pack_enface(volume, enface)), expected)


def test_enface_inputs_get_the_volumes_spatial_augmentation():
    """A volume constant along depth and equal to its en-face image stays equal to it through
    scaling, crop and flips, and the image is packed after the volume's channel."""
    rng = np.random.default_rng(0)
    image = rng.random((4, 1, 24, 40)).astype(np.float32)
    batch = {"data": np.repeat(image[:, :, :, None, :], 6, axis=3), "target": (image > 0.5).astype(np.float32),
             "mask": np.ones_like(image), "enface": image.copy(), "aug_seed": np.arange(4, dtype=np.uint32)}
    params = AugmentParams(p_scale=1.0, scale=(0.7, 1.4), p_brightness=0.0, p_contrast=0.0, p_noise=0.0)
    out = get_train_transforms((16, 32), "seg", params, enface=True, pack=True)(**batch)
    assert out["data"].shape == (4, 2, 16, 6, 32) and "enface" not in out
    assert not np.allclose(out["data"][:, 0, :, 0], image[:, 0, 4:20, 4:36])  # it was moved
    for k in range(6):
        np.testing.assert_allclose(out["data"][:, 1, :, k], out["data"][:, 0, :, k], atol=1e-6)


def test_the_value_comes_from_the_plan_or_the_flag():
    plan = Plan(dataset_name=NAME, enface_modalities=["FAF", "SLO"])
    kw = network_class("omnia").plan_kwargs((8, 32), 16)
    omnia = plan.configurations["omnia"] = replace(plan.configurations.get("omnia") or _config(), network=NetworkSpec(
        "omnia", {**kw, "enface_inputs": ["SLO"]}))
    cls = network_class("omnia")
    assert resolution.modalities_of(resolution.resolve(None, plan, omnia, "supervised", cls)) == ["SLO"]
    assert resolution.modalities_of(resolution.resolve(["none"], plan, omnia, "supervised", cls)) == []
    assert resolution.modalities_of(resolution.resolve(["all"], plan, omnia, "supervised", cls)) == ["FAF", "SLO"]
    assert resolution.folder_suffix(["SLO", "FAF"]) == "__enf-SLO-FAF" and resolution.folder_suffix([]) == ""
    fpn = replace(omnia, network=NetworkSpec("fpn", {}))
    assert resolution.resolve(None, plan, fpn, "supervised", network_class("fpn")).network.kwargs == {}
    with pytest.raises(FPNError, match="network 'fpn' takes the OCT volume only"):
        resolution.resolve(["SLO"], plan, fpn, "supervised", network_class("fpn"))


def _config():
    from fpnunet.plans.plan import Configuration

    return Configuration(network=NetworkSpec("omnia", {}), patch_size=(8, 32), batch_size=2, depth=16,
                         data_identifier="depth16")


def assert_reads_slo_faf(net: torch.nn.Module, x: torch.Tensor, out_shape: tuple[int, ...],
                         volume_only: torch.Tensor) -> None:
    """``net`` (2 volume channels, en-face inputs SLO, FAF) maps the packed ``x`` to ``out_shape``,
    its output depends on the FAF channel, and a volume without the en-face channels is refused."""
    with torch.no_grad():
        y = net(x)
        assert y.shape == out_shape
        other = x.clone()
        other[:, 3] = 1.0 - other[:, 3]  # another FAF image changes the output
        assert not torch.allclose(net(other), y)
    with pytest.raises(ShapeError, match=r"2 volume channel\(s\) \+ 2 en-face \(SLO, FAF\) = 4 input channels"):
        net(volume_only)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """``fpn_make_synthetic`` output (6 cases + 2 test cases with enfaceTs), planned for omnia and
    preprocessed once; 1 epoch of 2 steps."""
    return prepare(tmp_path_factory.mktemp("enface_inputs"), NAME, "omnia", bn_recalibration=2)


def prepare(root: Path, name: str, config: str, also: tuple[str, ...] = (), **training_values: int) -> Path:
    """``fpn_make_synthetic`` (6 cases + 2 test cases, with en-face images) under ``root``, planned
    for ``also`` and ``config`` and preprocessed; ``config``'s training set to 1 epoch of 2 steps
    (and ``training_values``)."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, root)
        make_synthetic_dataset(root / "raw" / name, n=6, labelled_fraction=1.0, seed=0, shape=(8, 48, 32),
                               num_test=2, show_progress=False)
        dataset_id = name.removeprefix("Dataset").split("_")[0]
        assert preprocess_main(["-d", dataset_id, "-c", *also, config, "-np", "1", "--no-progress"]) == 0
    plan_path = root / "preprocessed" / name / "plans.json"
    plan = Plan.load(plan_path)
    training = plan.configuration(config).training
    training.epochs, training.iterations_per_epoch, training.val_every = 1, 2, 1
    for key, value in training_values.items():  # e.g. bn_recalibration=2: the plan's 25 costs 12 x 2 steps
        setattr(training, key, value)
    plan.save(plan_path)
    return root


def _env(mp: pytest.MonkeyPatch, root: Path, results: Path | None = None) -> None:
    mp.setenv("FPN_RAW", str(root / "raw"))
    mp.setenv("FPN_PREPROCESSED", str(root / "preprocessed"))
    mp.setenv("FPN_RESULTS", str(results or root / "results"))
    mp.setenv("FPN_N_PROC_DA", "0")


@pytest.fixture()
def env(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    torch.set_num_threads(1)
    _env(monkeypatch, prepared, tmp_path / "results")
    raw = prepared / "raw" / NAME
    return {"raw": raw, "data": prepared / "preprocessed" / NAME / "depth64", "results": tmp_path / "results" / NAME,
            "tmp": tmp_path}


def _predict(model_dir: Path, images: Path, out: Path, *extra: str) -> int:
    return predict_main(["-i", str(images), "-o", str(out), "-m", str(model_dir), "--device", "cpu", "--disable-tta",
                         "--npz", *extra])


def test_train_validate_and_predict_with_enface_inputs(env, capsys):
    assert train_main([*BASE, "--enface-inputs", *MODS]) == 0
    model_dir = env["results"] / "omnia__lf1__scratch__enf-SLO-FAF"
    ckpt = load_checkpoint(model_dir / "fold_0" / "checkpoint_final.pth")
    assert ckpt["network"]["kwargs"]["enface_inputs"] == MODS  # the model folder records what prediction reads
    assert list(RunConfig.load(model_dir / "fold_0").enface_inputs) == MODS
    assert np.isfinite(ckpt["log"][-1]["val_dice"])  # validation during training read the en-face images
    assert len(list((model_dir / "fold_0" / "validation").glob("*.nii.gz"))) == 2  # the final one too
    capsys.readouterr()

    # fpn_predict reads enfaceTs beside imagesTs without being asked, and the images matter
    assert _predict(model_dir, env["raw"] / "imagesTs", env["tmp"] / "out") == 0
    assert "fused with SLO + FAF" in capsys.readouterr().err
    other = env["tmp"] / "other_enface"
    shutil.copytree(env["raw"] / "enfaceTs", other)
    for path in other.glob("*_FAF.nii.gz"):
        from fpnunet.io import read_image, write_image

        img = read_image(path)
        write_image(path, np.zeros_like(img.array), img.spacing)
    assert _predict(model_dir, env["raw"] / "imagesTs", env["tmp"] / "out_other", "--enface-dir", str(other)) == 0
    a = np.load(env["tmp"] / "out" / "EnfCh_T000.npz")["probabilities"]
    b = np.load(env["tmp"] / "out_other" / "EnfCh_T000.npz")["probabilities"]
    assert a.shape == b.shape and not np.allclose(a, b)

    # a missing modality: one line naming the case, nothing written
    (other / "EnfCh_T001_SLO.nii.gz").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _predict(model_dir, env["raw"] / "imagesTs", env["tmp"] / "out_bad", "--enface-dir", str(other))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'EnfCh_T001' has no SLO image" in err[0] and "input channel" in err[0]
    assert not (env["tmp"] / "out_bad").exists()


def test_a_model_without_enface_inputs_predicts_without_enfacets(env):
    assert train_main(BASE) == 0
    model_dir = env["results"] / "omnia__lf1__scratch"
    assert RunConfig.load(model_dir / "fold_0").enface_inputs == ()
    images = env["tmp"] / "alone" / "imagesTs"  # no enfaceTs beside it
    shutil.copytree(env["raw"] / "imagesTs", images)
    assert _predict(model_dir, images, env["tmp"] / "out_plain") == 0
    assert (env["tmp"] / "out_plain" / "EnfCh_T001.nii.gz").is_file()


@pytest.mark.parametrize(("flags", "message"), [
    (["--enface-inputs", "OCTA"], "OCTA is not an en-face modality of dataset Dataset905_EnfCh (it has FAF, SLO"),
    (["--enface-inputs", "all", "none"], "'none' and 'all' stand alone"),
    (["--enface-inputs", "SLO", "-tr", "cmc"], "not with --trainer cmc"),
    (["--enface-channels", "OCTA"], "OCTA is not an en-face modality"),  # the old spelling is an alias
])
def test_bad_requests_are_one_line_errors_that_touch_nothing(env, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        train_main([*BASE, *flags])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not env["results"].exists()


def test_a_case_without_its_modality_is_named(tmp_path):
    """A case preprocessed without the modality (no enfaceTr file): the training check and the
    loader name it; the loader reads the images of the others into ``enface``."""
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        np.save(tmp_path / f"{case}.npy", rng.random((1, 8, 4, 16)).astype(np.float32))
        np.save(tmp_path / f"{case}_seg.npy", (rng.random((8, 16)) > 0.5).astype(np.uint8))
    faf = rng.random((8, 16)).astype(np.float32)
    np.save(tmp_path / "a_FAF.npy", faf)
    with pytest.raises(FPNError, match="case 'b' has no preprocessed FAF image"):
        resolution.check_cases(tmp_path, ["a", "b"], ["FAF"])
    with pytest.raises(FPNError, match="case 'b' has no preprocessed FAF image"):
        EnfaceDataLoader(tmp_path, ["a", "b"], (8, 16), 1, enface=["FAF"])
    batch = EnfaceDataLoader(tmp_path, ["a"], (8, 16), 2, enface=["FAF"]).make_batch(0)
    assert batch["enface"].shape == (2, 1, 8, 16)
    np.testing.assert_array_equal(batch["enface"][0, 0], faf)  # not inverted: an input, not a target
