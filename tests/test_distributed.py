"""Distributed training on the CPU with gloo (2 processes): DDP/SyncBatchNorm step equivalence, a dead
rank, the helpers of fpnunet.distributed, and fpn_train under torchrun (end to end, kill -9, --continue)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from dist_workers import ddp_worker, free_port, train_steps, train_worker
from test_training import dataset  # noqa: F401  the fixture

from fpnunet import distributed as fdist
from fpnunet.errors import FPNError
from fpnunet.sync_batchnorm import AllReduceBatchNorm, convert_sync_batchnorm
from fpnunet.training.run import check_world_size


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One spawned 2-rank gloo group: one DDP step of each network, then rank 1 dies."""
    out = tmp_path_factory.mktemp("ddp") / "result.pt"
    ctx = multiprocessing.get_context("spawn")  # a fork of the threaded test process can deadlock
    port = free_port()
    procs = [ctx.Process(target=ddp_worker, args=(r, port, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    errors = [f.read_text() for f in out.parent.glob("result.pt.err*")]
    assert not errors, errors[0]
    return torch.load(out, weights_only=True) | {"folder": out.parent}


@pytest.mark.parametrize("kind", ["plain", "fpn"])
def test_ddp_step_equals_one_process_step_over_the_union_batch(ddp_result, kind):
    """2 ranks x batch 2 (DDP; FPN with SyncBatchNorm) == 1 process x batch 4: parameters and BatchNorm
    running statistics after one SGD step (gradient clipping included)."""
    single = train_steps(kind, ddp_result["folder"], per_rank=4)
    ddp = ddp_result[kind]
    assert ddp.keys() == single.keys()
    init = {k: v for k, v in __import__("dist_workers").make_net(kind).state_dict().items()}
    moved = 0
    for name, value in single.items():
        torch.testing.assert_close(ddp[name].float(), value.float(), rtol=1e-5, atol=1e-5, msg=name)
        moved += int(not torch.equal(value, init[name]))
    assert moved > len(single) // 2  # the step did change the weights
    if kind == "fpn":  # the running statistics are those of the union batch, not of rank 0's half
        assert any(k.endswith("running_var") for k in single)


def test_a_dead_rank_gives_a_clear_error_not_a_hang(ddp_result):
    message = ddp_result["peer"]
    assert message.startswith("rank 0 of 2: another process of the distributed job stopped or timed out during "
                               "epoch 1"), message
    assert "\n" not in message


def test_allreduce_batchnorm_is_plain_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    ref = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    ref.load_state_dict(bn.state_dict())
    weight = bn[1].weight
    convert_sync_batchnorm(bn, "cpu")
    assert isinstance(bn[1], AllReduceBatchNorm) and bn[1].weight is weight  # same parameters
    assert bn.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 1, 4, 5, 6)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn[1].running_var, ref[1].running_var)


def test_single_process_helpers():
    assert (fdist.rank(), fdist.world_size(), fdist.is_main()) == (0, 1, True)
    assert fdist.shard(5) == [0, 1, 2, 3, 4]
    assert fdist.gather_indexed(2, {0: "a", 1: "b"}) == ["a", "b"]
    assert fdist.main_first(lambda x: x + 1, 1) == 2
    assert fdist.strip_flag(["900", "0", "--gpus", "2", "--seed", "1", "--gpus=3"], "--gpus") == \
        ["900", "0", "--seed", "1"]
    cmd = fdist.launch_command("fpnunet.commands.train", ["900", "0", "--gpus", "2"], 2)
    assert cmd[1:] == ["-m", "fpnunet.launch_agent", "--standalone", "--nproc_per_node=2", "-m",
                       "fpnunet.commands.train", "900", "0"]


def test_launch_and_resume_checks(monkeypatch):
    with pytest.raises(FPNError, match="--gpus must be >= 1"):
        fdist.check_launch(0, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FPNError, match="CUDA device"):
            fdist.check_launch(2, "auto")
    fdist.check_launch(2, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FPNError, match="already runs under torchrun"):
        fdist.check_launch(2, "cpu")
    with pytest.raises(FPNError, match="cuda:LOCAL_RANK"):
        fdist.rank_device("cuda:1")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(FPNError, match=r"written by a run over 2 process\(es\), but this run has 1; --continue needs "
                                       r"the same world size \(torchrun --nproc_per_node 2"):
        check_world_size({"args": {"world_size": 2}}, Path("fold_0/checkpoint_latest.pth"))
    check_world_size({"args": {}}, Path("old.pth"))  # checkpoints before distributed training: 1 process
    monkeypatch.setenv("FPN_DIST_TIMEOUT", "soon")
    with pytest.raises(FPNError, match="FPN_DIST_TIMEOUT"):
        fdist.timeout_s()


# ----------------------------------------------------------------------------- fpn_train on 2 processes
def _forked_run(argv: list[str], tmp: Path, kill_after: int | None = None) -> tuple[list[int | None], list[str]]:
    ctx = multiprocessing.get_context("spawn")  # a fork of the threaded test process can deadlock
    port = free_port()
    reports = [tmp / f"rank{r}_{port}.txt" for r in range(2)]
    procs = [ctx.Process(target=train_worker, args=(r, port, argv, kill_after, str(reports[r]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    return [p.exitcode for p in procs], [f.read_text() if f.is_file() else "" for f in reports]


def test_fpn_train_two_processes_kill_and_continue(dataset, monkeypatch, capfd):  # noqa: F811
    """``fpn_train --gpus 2 --device cpu`` (torchrun, 2 gloo ranks) writes one set of files; a run whose rank 0
    is killed with SIGKILL after epoch 1, then ``--continue``d over 2 ranks, ends with the same weights; a
    --continue over 1 process is refused; the model predicts."""
    import numpy as np
    import pandas as pd
    from test_training import NAME, fold_dir

    from fpnunet.checkpoint import load_checkpoint
    from fpnunet.commands.train import main
    from fpnunet.inference.predictor import Predictor

    argv = ["901", "0", "--no-progress", "--seed", "1"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main([*argv, "--gpus", "2", "--device", "cpu"]) == 0  # runs torchrun --standalone --nproc_per_node=2
    out = capfd.readouterr().out
    assert out.count("global batch 4") == 1, out  # the header, printed by rank 0 only
    assert out.count("epoch 2/2") == 1
    fold = fold_dir(dataset["results"])
    assert sorted(p.name for p in fold.iterdir()) == [
        "checkpoint_best.pth", "checkpoint_final.pth", "checkpoint_latest.pth", "command.txt", "pretrained_from.json",
        "progress.png", "run_config.json", "training_log.csv", "validation"]
    assert (fold / "command.txt").read_text().splitlines() == ["fpn_train 901 0 --no-progress --seed 1 --device cpu"]
    log = pd.read_csv(fold / "training_log.csv")
    assert list(log["epoch"]) == [1, 2] and log["val_dice"].notna().all()
    reference = load_checkpoint(fold / "checkpoint_final.pth")
    saved = reference["run_config"]
    assert (saved["world_size"], saved["global_batch"], saved["lr_rule"]) == (2, 4, "none")
    assert (fold / "validation" / "summary.json").is_file()

    # the same run, rank 0 killed with SIGKILL after epoch 1, then resumed over 2 ranks
    monkeypatch.setenv("FPN_RESULTS", str(dataset["tmp"] / "results_b"))
    fold_b = fold_dir(dataset["tmp"] / "results_b" / NAME)
    codes, reports = _forked_run(argv, dataset["tmp"], kill_after=1)
    assert codes[0] == -9 and codes[1] == 3, (codes, reports)
    assert reports[1].startswith("rank 1 of 2: another process of the distributed job stopped"), reports[1]
    assert "--continue" in reports[1]
    assert load_checkpoint(fold_b / "checkpoint_latest.pth")["epoch"] == 1
    assert not (fold_b / "checkpoint_final.pth").exists()
    with pytest.raises(SystemExit):  # another world size is refused, nothing touched
        main([*argv, "--continue"])
    assert "needs the same world size" in capfd.readouterr().err
    capfd.readouterr()
    codes, reports = _forked_run([*argv, "--continue"], dataset["tmp"])
    assert codes == [0, 0], reports
    resumed_lines = capfd.readouterr().out.count("resumed from ")
    assert resumed_lines == 1, resumed_lines  # said by rank 0 only, not once per rank
    resumed = load_checkpoint(fold_b / "checkpoint_final.pth")
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert [r["train_loss"] for r in resumed["log"]] == [r["train_loss"] for r in reference["log"]]

    predictor = Predictor.from_model_folder(fold.parent, folds=["0"], device="cpu", tta=False)
    probs = predictor.predict_preprocessed(np.load(dataset["data"] / "tiny_000.npy"))
    assert probs.shape == (1, 8, 32) and np.isfinite(probs).all() and 0 <= probs.min() <= probs.max() <= 1
