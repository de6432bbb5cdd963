"""BatchNorm recalibration (fpnunet.training.loop): statistics recomputed, nothing else touched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fpnunet.training.loop import batchnorm_layers, recalibrate_batchnorm


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 3, 3, padding=1, bias=False), nn.BatchNorm3d(3), nn.ReLU(),
                         nn.Conv3d(3, 2, 1), nn.InstanceNorm3d(2))


def batches(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"data": rng.normal(2.0, 3.0, (2, 1, 4, 5, 6)).astype(np.float32)} for _ in range(n)]


def test_statistics_become_the_average_over_the_batches():
    net = small_net().eval()
    bn = net[1]
    bn.running_mean.fill_(50.0)
    bn.running_var.fill_(0.01)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    data = batches(5)
    assert recalibrate_batchnorm(net, data, num_batches=4) == 4
    with torch.no_grad():
        feats = [net[0](torch.from_numpy(b["data"])) for b in data[:4]]
    means = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in feats])
    variances = torch.stack([f.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for f in feats])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)  # plain average, not an EMA
    assert torch.allclose(bn.running_var, variances.mean(0), rtol=1e-4)
    assert bn.momentum == 0.1 and not net.training  # momentum and eval mode restored
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_training_mode_is_kept_and_fewer_batches_are_fine():
    net = small_net().train()
    assert recalibrate_batchnorm(net, batches(2), num_batches=10) == 2
    assert net.training and int(net[1].num_batches_tracked) == 2


def test_no_batch_keeps_the_old_statistics():
    net = small_net()
    net[1].running_mean.fill_(7.0)
    assert recalibrate_batchnorm(net, [], num_batches=3) == 0
    assert torch.equal(net[1].running_mean, torch.full((3,), 7.0))
    assert net[1].momentum == 0.1


def test_an_error_midway_keeps_the_old_statistics():
    net = small_net()
    net[1].running_var.fill_(4.0)

    def broken():
        yield from batches(2)
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        recalibrate_batchnorm(net, broken(), num_batches=3)
    assert torch.equal(net[1].running_var, torch.full((3,), 4.0)) and net[1].momentum == 0.1


def test_networks_without_batchnorm_are_left_alone():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.InstanceNorm3d(2, track_running_stats=False))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert batchnorm_layers(net) == []
    assert recalibrate_batchnorm(net, batches(3), num_batches=3) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
