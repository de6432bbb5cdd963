"""fpn_pretrain end to end on a tiny synthetic dataset (CPU, seconds), and fine-tuning from it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fpnunet.atomic import load_json
from fpnunet.checkpoint import load_checkpoint, model_spec, seed_everything
from fpnunet.commands.plan_and_preprocess import main as preprocess_main
from fpnunet.commands.pretrain import main as pretrain_main
from fpnunet.commands.pretrain import parse_args, pretrain
from fpnunet.commands.train import main as train_main
from fpnunet.errors import FPNError
from fpnunet.networks import network_class
from fpnunet.networks.registry import build_model
from fpnunet.plans.plan import Plan
from fpnunet.synthetic.dataset import make_synthetic_dataset
from fpnunet.training.losses import SegmentationLoss
from fpnunet.training.pretrained import load_pretrained
from fpnunet.training.reconstruction import ReconstructionTrainer, split_holdout
from fpnunet.training.run_config import RunConfig

NAME = "Dataset907_PreTiny"
SHAPE = (16, 64, 48)  # (B, D, A): B >= 11 so that SSIM has full 11 x 11 windows
N_CASES = 8
N_LABELLED = 6
BASE = ["907", "--device", "cpu", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic dataset (8 cases, 6 labelled, 2 test cases), planned and preprocessed once, its
    plan edited to a tiny FPN; yields the root folder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pretrain")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, root, "results")
        make_synthetic_dataset(root / "raw" / NAME, n=N_CASES, labelled_fraction=N_LABELLED / N_CASES, seed=1,
                               shape=SHAPE, show_progress=False)
        assert preprocess_main(["-d", "907", "-np", "1", "--no-progress"]) == 0
    plan_path = root / "preprocessed" / NAME / "plans.json"
    plan = Plan.load(plan_path)
    config = plan.configuration("fpn")
    kwargs = network_class("fpn").plan_kwargs(tuple(config.patch_size), config.depth, plan.enface_spacing)
    kwargs["features"] = [4, 8, 16, 32, 64][: len(kwargs["features"])]
    config.network.kwargs = kwargs
    config.batch_size = 2
    config.training.val_every = 1
    config.training.iterations_per_epoch = 2
    config.training.bn_recalibration = 2  # the plan's 25 would cost 12 x the 2 training steps per epoch
    plan.save(plan_path)
    yield root


def _env(mp: pytest.MonkeyPatch, root: Path, results: str) -> None:
    mp.setenv("FPN_RAW", str(root / "raw"))
    mp.setenv("FPN_PREPROCESSED", str(root / "preprocessed"))
    mp.setenv("FPN_RESULTS", str(root / results))
    mp.setenv("FPN_N_PROC_DA", "0")


@pytest.fixture()
def env(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The prepared dataset with a fresh, empty results folder for this test."""
    torch.set_num_threads(1)
    _env(monkeypatch, prepared, "unused")
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "results"))
    return {"root": prepared, "pre": prepared / "preprocessed" / NAME,
            "results": tmp_path / "results" / NAME, "tmp": tmp_path}


def fold_all(env: dict, target: str = "FAF") -> Path:
    return env["results"] / f"pretrain__fpn__{target}" / "fold_all"


class Stop(Exception):
    pass


# ----------------------------------------------------------------------------- a full run
def test_two_epochs_write_checkpoints_pictures_and_log(env):
    assert pretrain_main([*BASE, "--epochs", "2", "--seed", "2"]) == 0
    fold = fold_all(env)
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth", "training_log.csv",
                 "progress.png", "command.txt", "pretrain_split.json"):
        assert (fold / name).is_file(), name
    assert (fold.parent / "plans.json").is_file() and (fold.parent / "dataset.json").is_file()
    assert (fold / "command.txt").read_text().startswith("fpn_pretrain 907 --device cpu")
    pictures = sorted(p.name for p in (fold / "reconstructions").iterdir())
    assert pictures == ["epoch_001.png", "epoch_002.png"]
    assert (fold / "reconstructions" / "epoch_002.png").read_bytes()[:4] == b"\x89PNG"

    log = pd.read_csv(fold / "training_log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "val_loss", "val_ssim", "lr", "epoch_time_s"]
    assert list(log["epoch"]) == [1, 2]
    assert log.notna().all().all()
    assert ((log["val_ssim"] > -1) & (log["val_ssim"] <= 1)).all()
    assert np.allclose(log["val_loss"], 1 - log["val_ssim"])

    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert (ckpt["num_outputs"], ckpt["configuration"], ckpt["epoch"]) == (1, "fpn", 2)
    assert ckpt["run_config"]["target"] == "FAF" and ckpt["run_config"]["trainer"] == "reconstruction"

    # every training case with FAF, labelled or not, none of the test cases; a seeded held-out share
    split = load_json(fold / "pretrain_split.json")
    every = sorted(split["train"] + split["val"])
    assert every == [f"PreTiny_{i:03d}" for i in range(N_CASES)]
    assert len(split["val"]) == 1 and not set(split["val"]) & set(split["train"])
    assert split == {**split, "target": "FAF", "seed": 2}

    # a finished run is not silently overwritten
    with pytest.raises(FPNError, match="finished pretraining run.*--overwrite"):
        pretrain(parse_args(BASE), BASE)


def test_split_holdout_is_seeded_and_never_empties_training():
    cases = [f"c{i}" for i in range(20)]
    train, val = split_holdout(cases, 0.15, seed=0)
    assert len(val) == 3 and sorted(train + val) == sorted(cases)
    assert split_holdout(list(reversed(cases)), 0.15, seed=0) == (train, val)
    assert split_holdout(cases, 0.15, seed=1)[1] != val
    assert split_holdout(["a"], 0.5, 0) == (["a"], [])
    assert split_holdout(["a", "b"], 0.01, 0)[1] != []
    assert split_holdout(cases, 0.0, 0) == (sorted(cases), [])
    with pytest.raises(FPNError):
        split_holdout(cases, 1.0, 0)


def test_unknown_target_and_unplanned_dataset_are_user_errors(env, capsys):
    with pytest.raises(SystemExit) as exc:
        pretrain_main([*BASE, "--target", "OCTA"])
    assert exc.value.code == 1
    assert "no such en-face modality" in capsys.readouterr().err
    with pytest.raises(FPNError, match="not planned"):
        pretrain(parse_args(["Dataset908_Nothing"]))


# ----------------------------------------------------------------------------- resume
def test_continue_resumes_to_the_uninterrupted_weights(env, monkeypatch):
    args = [*BASE, "--target", "SLO", "--epochs", "2", "--seed", "5"]
    pretrain(parse_args(args), args)
    reference = load_checkpoint(fold_all(env, "SLO") / "checkpoint_final.pth")["state_dict"]

    monkeypatch.setenv("FPN_RESULTS", str(env["tmp"] / "interrupted"))
    fold = env["tmp"] / "interrupted" / NAME / "pretrain__fpn__SLO" / "fold_all"

    def stop(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        pretrain(parse_args(args), args, callbacks=(stop,))
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").is_file()
    with pytest.raises(FPNError, match="--continue"):
        pretrain(parse_args(args), args)
    pretrain(parse_args([*args, "--continue"]), [*args, "--continue"])
    resumed = load_checkpoint(fold / "checkpoint_final.pth")
    assert resumed["epoch"] == 2 and len(resumed["log"]) == 2
    assert reference.keys() == resumed["state_dict"].keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert sorted(p.name for p in (fold / "reconstructions").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert len((fold / "command.txt").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- fine-tuning
def test_finetuning_loads_every_tensor_and_starts_from_a_lower_loss(env):
    # pretrain long enough on the tiny data for the reconstruction to be informative (32 steps of 4
    # patches without augmentation: AUC of the head for the lesion ~0.85 on several data seeds)
    assert pretrain_main([*BASE, "--epochs", "4", "--iterations-per-epoch", "8", "--lr", "0.05", "--batch-size", "4",
                          "--no-augment", "--val-every", "4", "--pictures", "1"]) == 0
    checkpoint = fold_all(env) / "checkpoint_final.pth"
    log = pd.read_csv(fold_all(env) / "training_log.csv")
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]

    common = ["907", "0", "--device", "cpu", "--num-workers", "0", "--no-progress", "--epochs", "1",
              "--iterations-per-epoch", "1", "--seed", "4"]
    assert train_main([*common, "--pretrained", "auto"]) == 0
    assert train_main([*common, "--pretrained", "none"]) == 0
    tuned = env["results"] / "fpn__lf1__ssl-FAF" / "fold_0"
    scratch = env["results"] / "fpn__lf1__scratch" / "fold_0"

    # the fold folder records its start; every tensor of the network is loaded, the head too
    record = json.loads((tuned / "pretrained_from.json").read_text())
    assert record["tag"] == "ssl-FAF" and Path(record["path"]) == checkpoint
    plan = Plan.load(env["pre"] / "plans.json")
    config = plan.configuration("fpn")
    spec = model_spec("fpn", config.network.kwargs, 1, plan.num_outputs, "fpn")
    n_tensors = len(build_model(spec).state_dict())
    report = record["report"]
    assert report["num_loaded"] == report["total"] == n_tensors
    assert "head.weight" in report["loaded"] and "head.bias" in report["loaded"]
    assert report["missing"] == [] and report["shape_mismatch"] == [] and report["unexpected"] == []

    # one iteration per epoch and the same seed: train_loss is the loss of the same first batch
    tuned_loss = pd.read_csv(tuned / "training_log.csv")["train_loss"].iloc[0]
    scratch_loss = pd.read_csv(scratch / "training_log.csv")["train_loss"].iloc[0]
    assert tuned_loss < scratch_loss

    # in process, on the whole labelled cases as one batch (the first fine-tuning step's view: batch
    # statistics): the pretrained head already marks the lesion (1 - FAF is bright there) and its
    # segmentation loss is below that of several random initialisations
    data_dir = env["pre"] / config.data_identifier
    labelled = sorted(p.name[:-len("_seg.npy")] for p in data_dir.glob("*_seg.npy"))
    volumes = torch.from_numpy(np.stack([np.load(data_dir / f"{c}.npy") for c in labelled]))
    labels = torch.from_numpy(np.stack([np.load(data_dir / f"{c}_seg.npy") for c in labelled]))[:, None].long()
    assert (labels > 0).any() and (labels == 0).any()
    loss_fn = SegmentationLoss(plan.num_outputs)

    def evaluate(model: torch.nn.Module) -> tuple[float, float]:
        model.train()
        with torch.no_grad():
            logits = model(volumes)
        return float(loss_fn(logits, labels)), auc(logits.flatten().numpy(), (labels > 0).flatten().numpy())

    seed_everything(0)
    pretrained = build_model(spec)
    assert load_pretrained(pretrained, checkpoint, verbose=False).num_loaded == n_tensors
    ours, our_auc = evaluate(pretrained)
    assert our_auc > 0.75
    for seed in range(3):
        seed_everything(seed)
        loss, random_auc = evaluate(build_model(spec))
        assert ours < loss and our_auc > random_auc


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties broken arbitrarily)."""
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable") + 1.0
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_reconstruction_task_targets_and_loss_ignore_padding(env):
    plan = Plan.load(env["pre"] / "plans.json")
    data_dir = env["pre"] / plan.configuration("fpn").data_identifier
    def trainer(target: str, train: tuple, val: tuple) -> ReconstructionTrainer:
        return ReconstructionTrainer(RunConfig(config="fpn", data_dir=str(data_dir), target=target,
                                               invert=target == "FAF", train_cases=train, val_cases=val,
                                               loss="ssim"), plan)

    task = trainer("FAF", ("PreTiny_000",), ("PreTiny_001",))
    faf = np.load(data_dir / "PreTiny_001_FAF.npy")
    assert np.allclose(task.load_target("PreTiny_001"), 1 - faf)
    assert np.allclose(trainer("SLO", ("PreTiny_000",), ()).load_target("PreTiny_001"),
                       np.load(data_dir / "PreTiny_001_SLO.npy"))
    target = torch.rand(2, 1, 16, 48)
    mask = torch.ones(2, 1, 16, 48)
    mask[:, :, :, 40:] = 0
    logits = torch.logit(target.clamp(0.01, 0.99))
    noisy = logits.clone()
    noisy[..., 40:] = 50.0  # wrong only where the mask is 0
    batch = {"target": target, "mask": mask}
    assert float(task.loss(logits, batch)) < 1e-3
    assert float(task.loss(noisy, batch)) == pytest.approx(float(task.loss(logits, batch)), abs=1e-6)
    with pytest.raises(FPNError):
        trainer("FAF", (), ())


# ----------------------------------------------------------------------------- benchmark report
def _benchmark_module():
    from benchmark_modules import load_benchmark

    return load_benchmark("label_efficiency")


def test_label_efficiency_table_markdown_and_plot(tmp_path):
    le = _benchmark_module()
    methods = le.methods_of(["fpn", "lachinov"], ["fpn"], ["FAF", "SLO"])
    order = [m.label for m in methods]
    assert order == ["FPN", "Lachinov et al.", "FPN + SLO SSL", "FPN + FAF SSL"]
    runs = pd.DataFrame([
        {"method": "FPN", "fraction": 0.05, "fold": 0, "dice": 0.70},
        {"method": "FPN", "fraction": 0.05, "fold": 1, "dice": 0.80},
        {"method": "FPN + FAF SSL", "fraction": 0.05, "fold": 0, "dice": 0.90},
        {"method": "Lachinov et al.", "fraction": 1.0, "fold": 0, "dice": 0.85},
    ])
    table = le.summarise(runs, order, [0.05, 1.0])
    fpn = table[(table["method"] == "FPN") & (table["fraction"] == 0.05)].iloc[0]
    assert fpn["mean"] == pytest.approx(75.0) and fpn["std"] == pytest.approx(np.std([70, 80], ddof=1))
    assert fpn["n"] == 2
    assert table[(table["method"] == "FPN + SLO SSL")]["n"].sum() == 0
    text = le.render_markdown(table, order, [0.05, 1.0], {"command": "python x", "folds": [0, 1], "seeds": [0]})
    assert "| FPN | 75.00 +- 7.07 | - |" in text
    assert "| FPN + FAF SSL | **90.00 +- 0.00 (n=1)** | - |" in text
    paired = le.paired_differences(pd.DataFrame([
        {"method": m, "fraction": 0.05, "fold": k, "seed": 0, "dice": d}
        for m, k, d in (("FPN", 0, 0.70), ("FPN", 1, 0.80), ("FPN", 2, 0.60), ("FPN + FAF SSL", 0, 0.90),
                        ("FPN + FAF SSL", 1, 0.75), ("Lachinov et al.", 1, 0.85))]), order, [0.05])
    faf = paired[paired["method"] == "FPN + FAF SSL"].iloc[0]  # pairs on folds 0 and 1 only: +20, -5
    assert (faf["n"], faf["wins"], faf["reference"]) == (2, 1, "FPN")
    assert faf["mean"] == pytest.approx(7.5) and faf["std"] == pytest.approx(np.std([20, -5], ddof=1))
    lach = paired[paired["method"] == "Lachinov et al."].iloc[0]
    assert (lach["n"], lach["wins"]) == (1, 1) and lach["mean"] == pytest.approx(5.0)
    assert paired[paired["method"] == "FPN + SLO SSL"].iloc[0]["n"] == 0
    text = le.render_markdown(table, order, [0.05], {"command": "python x", "folds": [0, 1], "seeds": [0]},
                              paired=paired)
    assert "| FPN + FAF SSL | +7.50 +- 17.68 (1/2) |" in text and "| FPN + SLO SSL | - |" in text
    le.plot(table, order, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    fold = tmp_path / "fold_0"
    (fold / "validation").mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"")
    assert not le.Sweep.finished(fold)
    (fold / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.5}}))
    assert le.Sweep.finished(fold) and le.read_dice(fold) == 0.5
