"""fpn_train on a tiny preprocessed dataset written by hand in the docs/layout.md layout (CPU, seconds)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from precision_cases import PRECISIONS

from fpnunet.atomic import save_json
from fpnunet.checkpoint import load_checkpoint, model_spec, save_checkpoint
from fpnunet.commands.train import main, parse_args, train
from fpnunet.io import EnfaceGeometry, read_image, write_image
from fpnunet.networks import build_network, network_class
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan, TrainingDefaults
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.results_layout import pretrained_tag
from fpnunet.training.loop import batch_to_device
from fpnunet.training.optim import make_optimizer, make_scheduler
from fpnunet.training.pretrained import load_pretrained, resolve_pretrained
from fpnunet.training.run_config import RunConfig

NAME = "Dataset901_Tiny"
SHAPE_BA = (8, 32)
DEPTH = 64
SPACING = (0.12, 0.0113)
ORIGIN = (1.5, -2.0)
N_CASES = 6
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "epoch_time_s"]


def tiny_kwargs() -> dict:
    kw = network_class("fpn").plan_kwargs(SHAPE_BA, DEPTH, (1.0, 1.0))
    kw["features"] = [4, 8, 16, 32][: len(kw["features"])]
    return kw


@pytest.fixture()
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Raw labels + preprocessed arrays of 6 labelled cases, plan with a tiny FPN (2 epochs x 2 steps,
    BatchNorm recalibrated over 2 batches: the plan's 25 would cost 12 x the training steps)."""
    torch.set_num_threads(1)
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "preprocessed"), ("FPN_RESULTS", "results")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    raw, pre = tmp_path / "raw" / NAME, tmp_path / "preprocessed" / NAME
    data = pre / f"depth{DEPTH}"
    data.mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    ds = {"name": "Tiny", "channel_names": {"0": "OCT"}, "enface_modalities": ["FAF"],
          "labels": {"background": 0, "GA": 1}, "file_ending": ".nii.gz", "projection_axis": "auto"}
    save_json(ds, raw / "dataset.json")
    save_json(ds, pre / "dataset.json")
    geometry = EnfaceGeometry(SHAPE_BA, SPACING, ORIGIN, (1.0, 0.0, 0.0, 1.0))
    rng = np.random.default_rng(0)
    for i in range(N_CASES):
        case = f"tiny_{i:03d}"
        seg = np.zeros(SHAPE_BA, np.uint8)
        b0, a0 = rng.integers(0, 4), rng.integers(0, 20)
        seg[b0:b0 + 4, a0:a0 + 10] = 1
        vol = rng.normal(0, 0.3, (1, SHAPE_BA[0], DEPTH, SHAPE_BA[1])).astype(np.float32)
        vol[0, :, 30:40, :] += 2.0 * seg[:, None, :]  # the lesion is visible in the volume
        np.save(data / f"{case}.npy", vol)
        np.save(data / f"{case}_seg.npy", seg)
        np.save(data / f"{case}_FAF.npy", (1.0 - 0.8 * seg).astype(np.float32))
        save_json({"case": case, "labelled": True, "enface": ["FAF"], "raw_shape": [8, 64, 32],
                   "shape_bda": [8, 64, 32], "spacing_bda": [SPACING[0], 0.004, SPACING[1]],
                   "geometry": geometry.to_dict(), "retina_band": [0, 64], "crop": [0, 64],
                   "class_locations": {"1": np.argwhere(seg == 1).tolist()}}, data / f"{case}.json")
        write_image(raw / "labelsTr" / f"{case}.nii.gz", seg, SPACING, ORIGIN, (1.0, 0.0, 0.0, 1.0))
    config = Configuration(
        network=NetworkSpec("fpn", tiny_kwargs()), patch_size=SHAPE_BA, batch_size=2, depth=DEPTH,
        data_identifier=f"depth{DEPTH}", precision="bf16",
        training=TrainingDefaults(epochs=2, iterations_per_epoch=2, val_every=1, bn_recalibration=2),
    )
    Plan(dataset_name=NAME, labels={"background": 0, "GA": 1}, enface_modalities=["FAF"], file_ending=".nii.gz",
         enface_spacing=SPACING, median_shape=(8, 64, 32), configurations={"fpn": config}).save(pre / "plans.json")
    PreprocessedDataset(data).write_completion_record()
    return {"tmp": tmp_path, "raw": raw, "pre": pre, "data": data, "results": tmp_path / "results" / NAME}


def fold_dir(results: Path, model: str = "fpn__lf1__scratch", fold: str = "0") -> Path:
    return results / model / f"fold_{fold}"


class Stop(Exception):
    pass


def stop_after(n: int):
    def callback(epoch: int, record: dict) -> None:
        if epoch == n:
            raise Stop

    return callback


# ----------------------------------------------------------------------------- full run
@pytest.mark.real_plots  # progress.png drawn by matplotlib (tests/conftest.py)
def test_two_epoch_run_writes_every_file(dataset, capsys):
    assert main(["901", "0", "--seed", "3"]) == 0
    model = dataset["results"] / "fpn__lf1__scratch"
    fold = model / "fold_0"
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth", "training_log.csv",
                 "progress.png", "command.txt", "pretrained_from.json"):
        assert (fold / name).is_file(), name
    assert (model / "plans.json").is_file() and (model / "dataset.json").is_file()
    assert Plan.load(model / "plans.json").configurations["fpn"].patch_size == SHAPE_BA
    assert (fold / "command.txt").read_text().strip() == "fpn_train 901 0 --seed 3"
    assert json.loads((fold / "pretrained_from.json").read_text())["tag"] == "scratch"

    log = pd.read_csv(fold / "training_log.csv")
    assert list(log.columns) == LOG_COLUMNS
    assert list(log["epoch"]) == [1, 2]
    assert log[["train_loss", "val_loss", "val_dice", "lr", "epoch_time_s"]].notna().all().all()
    assert 0.0 <= log["val_dice"].min() and log["val_dice"].max() <= 1.0
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    for key in ("network", "in_channels", "num_outputs", "configuration", "state_dict", "epoch", "optimizer",
                "scheduler", "scaler", "rng", "log", "run_config"):
        assert key in ckpt, key
    assert ckpt["network"] == {"name": "fpn", "kwargs": tiny_kwargs()}
    assert (ckpt["in_channels"], ckpt["num_outputs"], ckpt["configuration"], ckpt["epoch"]) == (1, 1, "fpn", 2)
    assert set(ckpt["rng"]) == {"torch", "numpy", "python", "cuda"}
    assert len(ckpt["log"]) == 2 and ckpt["run_config"]["seed"] == 3
    best = load_checkpoint(fold / "checkpoint_best.pth")
    assert best["best_score"] == pytest.approx(log["val_dice"].max())

    splits = json.loads((dataset["pre"] / "splits_final.json").read_text())
    val_cases = splits[0]["val"]
    masks = sorted((fold / "validation").glob("*.nii.gz"))
    assert [m.name for m in masks] == [f"{c}.nii.gz" for c in sorted(val_cases)]
    img = read_image(masks[0])
    assert img.array.shape == SHAPE_BA
    assert np.allclose(img.spacing, SPACING, rtol=1e-5) and np.allclose(img.origin, ORIGIN)
    assert set(np.unique(img.array)) <= {0, 1}
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == len(val_cases) and summary["checkpoint"] == "checkpoint_final.pth"
    per_case = [e["metrics"]["1"]["Dice"] for e in summary["metric_per_case"]]
    assert summary["mean"]["1"]["Dice"] == pytest.approx(np.mean(per_case))
    assert "mean Dice" in capsys.readouterr().out
    # validation/ gets the same overlays as prediction (prediction and reference outlines)
    overlays = sorted(p.name for p in (fold / "validation" / "overlays").iterdir())
    assert overlays == [f"{c}.png" for c in sorted(val_cases)]

    # a finished run is not silently retrained
    with pytest.raises(SystemExit) as exc:
        main(["901", "0", "--seed", "3"])
    assert exc.value.code == 1
    assert "finished run" in capsys.readouterr().err


def test_resume_gives_exactly_the_uninterrupted_weights(dataset, monkeypatch, capsys):
    argv = ["901", "0", "--val-every", "1"]
    main(argv)
    uninterrupted = load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")

    monkeypatch.setenv("FPN_RESULTS", str(dataset["tmp"] / "results_b"))
    results_b = dataset["tmp"] / "results_b" / NAME
    with pytest.raises(Stop):
        train(parse_args(argv), argv, callbacks=(stop_after(1),))
    fold = fold_dir(results_b)
    assert load_checkpoint(fold / "checkpoint_latest.pth")["epoch"] == 1
    assert not (fold / "checkpoint_final.pth").exists()
    with pytest.raises(SystemExit):  # an unfinished run needs --continue
        main(argv)
    assert "--continue" in capsys.readouterr().err
    main([*argv, "--continue"])
    resumed = load_checkpoint(fold / "checkpoint_final.pth")
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert [r["train_loss"] for r in resumed["log"]] == [r["train_loss"] for r in uninterrupted["log"]]
    assert len(pd.read_csv(fold / "training_log.csv")) == 2
    assert (fold / "command.txt").read_text().splitlines() == [
        "fpn_train 901 0 --val-every 1", "fpn_train 901 0 --val-every 1 --continue"]


def test_continue_without_checkpoint_starts_fresh(dataset, capsys):
    main(["901", "0", "--epochs", "1", "--continue"])
    assert "starting a fresh run" in capsys.readouterr().out
    assert load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")["epoch"] == 1


def test_val_only_redoes_the_validation(dataset):
    main(["901", "0", "--epochs", "1", "--iterations-per-epoch", "1"])
    fold = fold_dir(dataset["results"])
    shutil.rmtree(fold / "validation")
    main(["901", "0", "--val"])
    assert (fold / "validation" / "summary.json").is_file()
    assert len(list((fold / "validation").glob("*.nii.gz"))) >= 1
    main(["901", "0", "--val", "--val-checkpoint", "best"])
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["checkpoint"] == "checkpoint_best.pth"
    assert (fold / "command.txt").read_text().splitlines()[-1] == "fpn_train 901 0 --val --val-checkpoint best"


def test_val_only_without_checkpoint_errors(dataset, capsys):
    with pytest.raises(SystemExit):
        main(["901", "1", "--val"])
    assert "no checkpoint to validate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pretrained weights
def _save_model_checkpoint(path: Path, num_outputs: int = 1, seed: int = 7) -> dict:
    torch.manual_seed(seed)
    spec = model_spec("fpn", tiny_kwargs(), 1, num_outputs, "fpn")
    net = build_network("fpn", 1, num_outputs, **tiny_kwargs())
    save_checkpoint({**spec, "state_dict": net.state_dict(), "epoch": 0}, path)
    return net.state_dict()


def test_load_pretrained_reports_matching_tensors(tmp_path, capsys):
    weights = _save_model_checkpoint(tmp_path / "same.pth")
    model = build_network("fpn", 1, 1, **tiny_kwargs())
    report = load_pretrained(model, tmp_path / "same.pth")
    assert report.num_loaded == report.total == len(model.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert f"loaded {report.total} of {report.total} tensors" in capsys.readouterr().out

    _save_model_checkpoint(tmp_path / "three.pth", num_outputs=3)
    report = load_pretrained(model, tmp_path / "three.pth")
    mismatched = [name for name, _, _ in report.shape_mismatch]
    assert report.num_loaded == report.total - len(mismatched) and 1 <= len(mismatched) <= 2
    assert all(name.startswith("head") for name in mismatched)
    assert "shape mismatch" in capsys.readouterr().out

    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="no tensor matches"):
        load_pretrained(model, tmp_path / "bad.pth")


def test_train_with_pretrained_path(dataset):
    path = dataset["tmp"] / "pre.pth"
    _save_model_checkpoint(path)
    main(["901", "0", "--pretrained", str(path), "--epochs", "1", "--iterations-per-epoch", "1"])
    tag = pretrained_tag(path)
    assert tag.startswith("pretrained-pre-")
    fold = fold_dir(dataset["results"], f"fpn__lf1__{tag}")
    info = json.loads((fold / "pretrained_from.json").read_text())
    n = len(build_network("fpn", 1, 1, **tiny_kwargs()).state_dict())
    assert info["tag"] == tag and info["path"] == str(path)
    assert info["report"]["num_loaded"] == info["report"]["total"] == n
    assert (fold / "checkpoint_final.pth").is_file()


def test_pretrained_auto_finds_the_pretraining_run(dataset, capsys):
    results = dataset["results"]
    tag, path, message = resolve_pretrained("auto", results, "fpn")
    assert (tag, path) == ("scratch", None) and "no pretraining run" in message
    slo = results / "pretrain__fpn__SLO" / "fold_all" / "checkpoint_final.pth"
    slo.parent.mkdir(parents=True)
    _save_model_checkpoint(slo)
    assert resolve_pretrained("auto", results, "fpn")[:2] == ("ssl-SLO", slo)
    faf = results / "pretrain__fpn__FAF" / "fold_all" / "checkpoint_final.pth"
    faf.parent.mkdir(parents=True)
    _save_model_checkpoint(faf)
    assert resolve_pretrained("auto", results, "fpn")[:2] == ("ssl-FAF", faf)
    main(["901", "0", "--label-fraction", "0.5", "--epochs", "1", "--iterations-per-epoch", "1"])
    fold = fold_dir(results, "fpn__lf0.5__ssl-FAF")
    assert json.loads((fold / "pretrained_from.json").read_text())["path"] == str(faf)
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert len(ckpt["run_config"]["train_cases"]) == 2  # ceil(0.5 x 4)


# ----------------------------------------------------------------------------- errors
def test_cli_errors_cleanly(dataset, capsys):
    (dataset["tmp"] / "raw" / "Dataset902_Raw").mkdir()
    for argv, expected in (
        (["902", "0"], "fpn_plan_and_preprocess"),
        (["903", "0"], "no dataset with id 903"),
        (["901", "0", "--config", "nope"], "no configuration 'nope'"),
        (["901", "7"], "fold 7 does not exist"),
        (["901", "0", "--label-fraction", "0"], "--label-fraction"),
        (["901", "0", "--pretrained", "/no/such.pth"], "no such file"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and expected in err, (argv, err)
        assert "Traceback" not in err
    for p in dataset["data"].glob("*_seg.npy"):
        p.unlink()
        props = dataset["data"] / p.name.replace("_seg.npy", ".json")
        save_json(json.loads(props.read_text()) | {"labelled": False}, props)
    PreprocessedDataset(dataset["data"]).write_completion_record()  # a complete folder of unlabelled cases
    with pytest.raises(SystemExit):
        main(["901", "0"])
    assert "no labelled case" in capsys.readouterr().err


# ----------------------------------------------------------------------------- schedule
def test_poly_schedule_and_lr_column(dataset):
    model = build_network("fpn", 1, 1, **tiny_kwargs())
    opt = make_optimizer(model, TrainingDefaults(lr=0.1), 0.1)
    sched = make_scheduler(opt, "poly", 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * (1 - e / 4) ** 0.9 for e in range(4)])
    assert RunConfig(epochs=10, iterations_per_epoch=1, val_every=4).validates_at(3)
    assert not RunConfig(epochs=10, iterations_per_epoch=1, val_every=4).validates_at(4)
    assert RunConfig(epochs=10, iterations_per_epoch=1, val_every=0).validates_at(9)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_batchnorm_statistics_are_recalibrated_and_nothing_else(dataset, monkeypatch, precision):
    """--bn-recalibration N: the final checkpoint's BN statistics are the average over N batches of
    the last epoch's loader with the final weights; the weights are those of a run without it.
    Run in each precision, pinned: the check recomputes the statistics as the loop does (channels-last
    batches, the run's precision)."""
    flags = ["--val-every", "0", "--seed", "2", "--device", "cpu", "--precision", precision]
    main(["901", "0", "--bn-recalibration", "3", *flags])
    ckpt = load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")
    assert ckpt["run_config"]["precision"] == precision
    monkeypatch.setenv("FPN_RESULTS", str(dataset["tmp"] / "results_b"))
    main(["901", "0", "--bn-recalibration", "0", *flags])
    plain = load_checkpoint(fold_dir(dataset["tmp"] / "results_b" / NAME) / "checkpoint_final.pth")
    stats = [k for k in ckpt["state_dict"] if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k, v in ckpt["state_dict"].items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        assert torch.equal(v, plain["state_dict"][k]), k  # recalibration touches no weight, no RNG
    assert any(not torch.allclose(ckpt["state_dict"][k], plain["state_dict"][k]) for k in stats)

    from fpnunet.networks.registry import model_from_checkpoint
    from fpnunet.training.loop import recalibrate_batchnorm
    from fpnunet.training.splits import apply_label_fraction
    from fpnunet.training.supervised import SupervisedTrainer

    plan = Plan.load(dataset["pre"] / "plans.json")
    train_cases = apply_label_fraction(json.loads((dataset["pre"] / "splits_final.json").read_text())[0]["train"], 1)
    oversample = plan.configurations["fpn"].training.foreground_oversample
    task = SupervisedTrainer(RunConfig(config="fpn", data_dir=str(dataset["data"]), train_cases=tuple(train_cases),
                                       seed=2, foreground_oversample=oversample), plan)
    model, _ = model_from_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")
    source = task.train_batches(1)
    try:
        assert recalibrate_batchnorm(model, source, 3, precision=precision,  # as the loop does it
                                     prepare=lambda b: batch_to_device(b, torch.device("cpu"), True)) == 3
    finally:
        source.close()
    for k in stats:
        assert torch.allclose(model.state_dict()[k], ckpt["state_dict"][k], atol=1e-5), k


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_through_synthetic_and_preprocessing(tmp_path, monkeypatch, capsys):
    """fpn_make_synthetic -> fpn_plan_and_preprocess -> fpn_train on a tiny shape (planner's own plan)."""
    from fpnunet.commands.plan_and_preprocess import main as plan_and_preprocess
    from fpnunet.synthetic.dataset import make_synthetic_dataset

    torch.set_num_threads(1)
    for var, sub in (("FPN_RAW", "raw"), ("FPN_PREPROCESSED", "pre"), ("FPN_RESULTS", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    make_synthetic_dataset(tmp_path / "raw" / "Dataset906_E2E", n=6, seed=1, shape=(8, 96, 32), num_test=0,
                           show_progress=False)
    plan_and_preprocess(["-d", "906", "-np", "1", "--no-progress"])
    capsys.readouterr()
    main(["906", "0", "--epochs", "1", "--iterations-per-epoch", "2", "--no-progress"])
    out = capsys.readouterr()
    assert "mean Dice" in out.out
    assert "it/s" not in out.err and "case/s" not in out.err  # --no-progress: no bars, the final validation's too
    fold = tmp_path / "res" / "Dataset906_E2E" / "fpn__lf1__scratch" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["num_cases"] >= 1
    for entry in summary["metric_per_case"]:
        ref = read_image(entry["reference_file"])
        pred = read_image(entry["prediction_file"])
        assert pred.array.shape == ref.array.shape
        assert np.allclose(pred.spacing, ref.spacing, rtol=1e-5) and np.allclose(pred.origin, ref.origin)
    assert len(pd.read_csv(fold / "training_log.csv")) == 1


def test_pretrained_path_of_a_pretraining_run_keeps_its_ssl_tag(tmp_path):
    from fpnunet.training.pretrained import resolve_pretrained

    ckpt = tmp_path / "pretrain__fpn__SLO" / "fold_all" / "checkpoint_final.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    tag, path, _ = resolve_pretrained(str(ckpt), tmp_path, "fpn")
    assert tag == "ssl-SLO" and path == ckpt
    other = tmp_path / "weights.pth"
    other.write_bytes(b"x")
    tag = resolve_pretrained(str(other), tmp_path, "fpn")[0]
    assert tag.startswith("pretrained-weights-") and len(tag) == len("pretrained-weights-") + 8
    other2 = tmp_path / "sub" / "weights.pth"  # same name, another checkpoint: another model folder
    other2.parent.mkdir()
    other2.write_bytes(b"x")
    assert resolve_pretrained(str(other2), tmp_path, "fpn")[0] not in (tag, "pretrained")
