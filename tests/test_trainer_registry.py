"""Trainers, losses, optimizers, schedules and augmentations by name; the RunConfig saved whole.

A toy loss and a toy trainer are registered here the way docs/training.md shows (one decorator
each) and trained end to end on the tiny dataset of test_training; the RunConfig is frozen, saved
whole in every checkpoint and in the fold folder and loads back equal; a checkpoint in the layout
of earlier rounds (``args`` + ``hyperparameters``) still resumes to the uninterrupted weights.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_training import NAME, Stop, dataset, fold_dir, stop_after  # noqa: F401  (dataset is a fixture)
from torch import nn

from fpnunet.checkpoint import load_checkpoint, save_checkpoint
from fpnunet.commands.train import main, parse_args, train
from fpnunet.errors import FPNError
from fpnunet.training.augment import AUGMENTATIONS
from fpnunet.training.losses import LOSSES, masked_mean
from fpnunet.training.optim import OPTIMIZERS, SCHEDULES
from fpnunet.training.run_config import RUN_CONFIG_FILE, RunConfig, saved_settings
from fpnunet.training.supervised import SupervisedTrainer
from fpnunet.training.trainer import TRAINERS, register_trainer

FAST = ["--epochs", "2", "--iterations-per-epoch", "1", "--val-every", "1", "--bn-recalibration", "0",
        "--precision", "fp32", "--device", "cpu", "--pretrained", "none", "--no-progress"]


@pytest.mark.parametrize("registry, name, listed", [
    (TRAINERS, "fixmatch", "cmc, reconstruction, supervised"),
    (LOSSES, "focal", "cmc, dice_ce, ssim"),
    (OPTIMIZERS, "lion", "adamw, sgd"),
    (SCHEDULES, "step", "constant, cosine, poly"),
    (AUGMENTATIONS, "mixup", "cmc, default, none, plane2d"),
])
def test_an_unknown_name_is_one_line_listing_the_registered_ones(registry, name, listed):
    with pytest.raises(FPNError) as exc:
        registry.get(name)
    assert str(exc.value) == f"unknown {registry.kind} {name!r}; registered: {listed}"


def test_fpn_train_names_the_registered_trainers_before_touching_anything(dataset, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["901", "0", "--trainer", "fixmatch"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("unknown trainer 'fixmatch'; registered: cmc, reconstruction, supervised")
    assert not dataset["results"].exists()


class HalfMSE(nn.Module):
    """A toy loss: mean squared error of the sigmoid against the foreground, times 0.5."""

    def forward(self, logits, target, mask=None):
        return 0.5 * masked_mean((torch.sigmoid(logits.float()) - (target > 0).float()) ** 2, mask)


@pytest.fixture()
def toy_registered(monkeypatch):
    """Register the toy loss and trainer for one test (the registries are left as they were)."""
    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))
    monkeypatch.setattr(TRAINERS, "_items", dict(TRAINERS._items))
    calls = {"loss": 0}

    @LOSSES.register("half_mse")
    def half_mse(num_outputs, params):
        calls["loss"] += 1
        return HalfMSE()

    @register_trainer("toy")
    class ToyTrainer(SupervisedTrainer):
        default_loss = "half_mse"

    return calls


def test_a_toy_trainer_and_loss_train_end_to_end(dataset, toy_registered, capsys):  # noqa: F811
    assert main(["901", "0", *FAST, "--trainer", "toy"]) == 0
    fold = dataset["results"] / "fpn__lf1__scratch__toy" / "fold_0"
    final = load_checkpoint(fold / "checkpoint_final.pth")
    assert final["run_config"]["trainer"] == "toy" and final["run_config"]["loss"] == "half_mse"
    assert toy_registered["loss"] >= 1
    # the toy loss is what was minimised: the logged value is half the plain MSE, below 0.5 / 2
    assert all(0.0 < r["train_loss"] <= 0.25 for r in final["log"])
    assert (fold / "validation" / "summary.json").is_file()  # the supervised trainer's export ran
    assert "trainer toy" in capsys.readouterr().out


def test_run_config_is_frozen_and_saved_whole_in_checkpoints_and_the_fold_folder(dataset):  # noqa: F811
    assert main(["901", "0", *FAST, "--lr", "0.05", "--seed", "4"]) == 0
    fold = fold_dir(dataset["results"])
    config = RunConfig.load(fold)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]
    assert (config.lr, config.seed, config.epochs, config.trainer, config.fold) == (0.05, 4, 2, "supervised", "0")
    assert config.train_cases and config.val_cases and config.fold_dir == str(fold)
    assert config.precision == "fp32" and config.optimizer == "sgd" and config.batch_size == 2
    assert RunConfig.from_dict(config.to_dict()) == config
    assert json.loads((fold / RUN_CONFIG_FILE).read_text()) == config.to_dict()
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
        ckpt = load_checkpoint(fold / name)
        assert RunConfig.from_dict(ckpt["run_config"]) == config, name
        assert "args" not in ckpt and "hyperparameters" not in ckpt


def test_run_config_rejects_bad_resolved_values():
    with pytest.raises(FPNError, match="plans.json/command line: epochs must be a positive whole number"):
        RunConfig(epochs=0)
    with pytest.raises(FPNError, match="precision must be bf16 or fp32"):
        RunConfig(precision="fp16")
    with pytest.raises(FPNError, match=r"unknown key\(s\) \['learning_rate'\]"):
        RunConfig.from_dict({"learning_rate": 0.1})


def _old_layout(ckpt: dict) -> dict:
    """A checkpoint as earlier rounds wrote it: ``args`` (command line, defaults filled in, loop
    settings under ``loop``) and ``hyperparameters`` instead of ``run_config``."""
    rc = ckpt.pop("run_config")
    hp = {k: rc[k] for k in ("epochs", "iterations_per_epoch", "batch_size", "lr", "weight_decay", "optimizer",
                             "momentum", "nesterov", "lr_schedule", "val_every", "bn_recalibration", "grad_clip",
                             "foreground_oversample", "precision", "num_workers", "seed")}
    args = {"dataset": rc["dataset"], "fold": rc["fold"], "config": rc["config"], "trainer": rc["trainer"],
            "label_fraction": rc["label_fraction"], "seed": rc["seed"], "lr": rc["lr"],
            "weight_decay": rc["weight_decay"], "batch_size": rc["batch_size"], "world_size": 1, "global_batch": 2,
            "lr_rule": "none", "train_cases": rc["train_cases"], "val_cases": rc["val_cases"],
            "epochs": None, "precision": "fp32", "resume": False,
            "loop": {"epochs": rc["epochs"], "precision": "fp32", "device": "cpu", "sync_bn": True}}
    return ckpt | {"args": args, "hyperparameters": hp}


def test_an_old_layout_checkpoint_resumes_to_the_uninterrupted_weights(dataset, monkeypatch, capsys):  # noqa: F811
    argv = ["901", "0", *FAST]
    main(argv)
    uninterrupted = load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")

    monkeypatch.setenv("FPN_RESULTS", str(dataset["tmp"] / "results_b"))
    with pytest.raises(Stop):
        train(parse_args(argv), argv, callbacks=(stop_after(1),))
    fold = fold_dir(dataset["tmp"] / "results_b" / NAME)
    old = _old_layout(load_checkpoint(fold / "checkpoint_latest.pth"))
    save_checkpoint(old, fold / "checkpoint_latest.pth")
    assert saved_settings(old)["world_size"] == 1 and saved_settings(old)["precision"] == "fp32"
    capsys.readouterr()
    main([*argv, "--continue"])
    out = capsys.readouterr().out
    assert "resumed from" in out and "warning: --continue" not in out
    resumed = load_checkpoint(fold / "checkpoint_final.pth")
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert [r["train_loss"] for r in resumed["log"]] == [r["train_loss"] for r in uninterrupted["log"]]
