"""fpn_train options beyond the basics (weight decay) and the BatchNorm benchmark, on the tiny
dataset of test_training.py."""
from __future__ import annotations

import pytest
import torch
from precision_cases import PRECISIONS
from test_training import dataset, fold_dir  # noqa: F401  (dataset is a fixture)

from fpnunet.checkpoint import load_checkpoint
from fpnunet.commands.train import main


def test_weight_decay_flag_reaches_the_optimizer_and_is_recorded(dataset, capsys):  # noqa: F811
    main(["901", "0", "--val-every", "0", "--device", "cpu"])
    plain = load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")
    assert plain["run_config"]["weight_decay"] == pytest.approx(1e-4)  # the plan's
    assert plain["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(1e-4)
    main(["901", "0", "--val-every", "0", "--device", "cpu", "--weight-decay", "0.05", "--overwrite"])
    assert "weight decay 0.05" in capsys.readouterr().out
    ckpt = load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")
    assert ckpt["run_config"]["weight_decay"] == pytest.approx(0.05)
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(0.05)
    weights = [k for k in ckpt["state_dict"] if k.endswith("weight")]
    assert any(not torch.equal(ckpt["state_dict"][k], plain["state_dict"][k]) for k in weights)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["901", "0", "--device", "cpu", "--weight-decay", "-1", "--overwrite"])
    assert "--weight-decay must be a finite number >= 0, got -1" in capsys.readouterr().err
    assert (fold_dir(dataset["results"]) / "checkpoint_final.pth").is_file()  # --overwrite deleted nothing


@pytest.mark.parametrize("precision", PRECISIONS)
def test_bn_recalibration_benchmark_restores_corrupted_statistics(dataset, capsys, precision):  # noqa: F811
    """benchmarks/bn_recalibration.py recomputes exactly the statistics training saved (same loader,
    same batches, channels-last and the run's precision, as the loop), so a checkpoint whose
    statistics were spoiled gets its own Dice back, to 1e-6 in either precision (pinned per run)."""
    from benchmark_modules import load_benchmark

    main(["901", "0", "--val-every", "0", "--bn-recalibration", "3", "--seed", "2", "--device", "cpu",
          "--precision", precision])
    path = fold_dir(dataset["results"]) / "checkpoint_final.pth"
    bench = load_benchmark("bn_recalibration")
    assert bench.run_precision(torch.load(path, weights_only=True)) == precision
    before = bench.evaluate(path, 3, False, "cpu")
    assert before["batches"] == 3 and before["train_cases"] == 4 and before["val_cases"] == 2
    assert before["recalibrated"] == pytest.approx(before["saved"], abs=1e-6)
    ckpt = torch.load(path, weights_only=True)
    for k in ckpt["state_dict"]:
        if k.endswith("running_var"):
            ckpt["state_dict"][k].fill_(1e4)
    torch.save(ckpt, path)
    after = bench.evaluate(path, 3, False, "cpu")
    assert after["saved"] != pytest.approx(before["saved"], abs=1e-3)
    assert after["recalibrated"] == pytest.approx(before["saved"], abs=1e-6)
    assert bench.main([str(dataset["results"]), "--batches", "3"]) == 0
    assert "change in validation Dice over 1 checkpoints" in capsys.readouterr().out
    assert bench.main([str(dataset["tmp"] / "nowhere")]) == 1


def ckpt_precision(dataset) -> str:  # noqa: F811
    return load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")["run_config"]["precision"]


def test_compile_flag_routes_the_training_forward_and_auto_precision_says_why(dataset, capsys, monkeypatch):  # noqa: F811
    """--compile wraps the training forward in torch.compile (a stand-in here: compiling on a
    2-core CI CPU takes minutes); checkpoints keep the plain weights. --precision auto on a CPU
    without native bf16 stays fp32."""
    from fpnunet import precision

    calls = []

    def fake_compile(model):
        def forward(x):
            calls.append(tuple(x.shape))
            return model(x)
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.delenv("FPN_CPU_BF16")  # the suite pins it (conftest); here auto decides from the (stubbed) CPU
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: [])
    main(["901", "0", "--val-every", "0", "--device", "cpu", "--compile", "--iterations-per-epoch", "2",
          "--epochs", "1"])
    assert len(calls) == 2 and all(len(s) == 5 for s in calls)
    assert ckpt_precision(dataset) == "fp32"  # no native bf16 (stubbed): auto stays fp32 on the CPU
    ckpt = load_checkpoint(fold_dir(dataset["results"]) / "checkpoint_final.pth")
    assert ckpt["run_config"]["compile"] is True
    assert not any(k.startswith("_orig_mod.") for k in ckpt["state_dict"])
