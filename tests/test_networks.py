"""Tests of the registered segmentation networks (fpnunet.networks)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks import available_networks, build_network, network_class
from fpnunet.networks.blocks import max_pool_depth, plan_enface_pooling, split_depth
from fpnunet.networks.layout import to_channels_last

torch.set_num_threads(1)

NETWORKS = ["fpn", "ipn", "ipnv2", "lachinov", "resensnet"]
SPECTRALIS_SPACING = (0.12, 0.0113)  # (sB, sA) in mm


def _planned(name: str, patch: tuple[int, int], depth: int, num_classes: int = 1, spacing=(1.0, 1.0)):
    kwargs = network_class(name).plan_kwargs(patch, depth, spacing)
    return build_network(name, in_channels=1, num_classes=num_classes, **kwargs), kwargs


def test_all_networks_registered():
    assert set(NETWORKS) <= set(available_networks())


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_tiny_forward_backward(name, num_classes):
    torch.manual_seed(0)
    net, _ = _planned(name, (8, 32), 64, num_classes)
    x = torch.randn(2, 1, 8, 64, 32)
    y = net(x)
    assert y.shape == (2, num_classes, 8, 32)
    target = torch.rand_like(y)
    F.binary_cross_entropy_with_logits(y, target).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads), "every parameter gets a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NETWORKS)
def test_multichannel_input_and_eval_determinism(name):
    torch.manual_seed(0)
    kwargs = network_class(name).plan_kwargs((8, 32), 64)
    net = build_network(name, in_channels=2, num_classes=2, **kwargs).eval()
    x = torch.randn(1, 2, 8, 64, 32)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert a.shape == (1, 2, 8, 32)
    assert torch.equal(a, b)


def test_fpn_default_parameter_count():
    net = build_network("fpn", in_channels=1, num_classes=1)
    assert sum(p.numel() for p in net.parameters()) == 4_369_553


def test_fpn_flops_match_paper():
    with torch.device("meta"):
        net = build_network("fpn", in_channels=1, num_classes=1)
    x = torch.empty(1, 1, 32, 128, 256, device="meta")
    with FlopCounterMode(display=False) as counter:
        y = net(x)
    assert y.shape == (1, 1, 32, 256)
    assert counter.get_total_flops() == pytest.approx(76.1e9, rel=0.01)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    assert counter.get_total_flops() == pytest.approx(227.9e9, rel=0.01)


def test_fpn_plan_reproduces_paper_config():
    kwargs = network_class("fpn").plan_kwargs((32, 256), 128, SPECTRALIS_SPACING)
    assert kwargs == {
        "features": [16, 32, 64, 128, 256],
        "pooling": [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        "fpb_kernel": 4,
    }
    assert build_network("fpn", 1, 1).config == kwargs
    assert network_class("fpn").input_divisors(**kwargs) == ((4, 16, 16), 64)
    rs = network_class("resensnet").plan_kwargs((32, 256), 128, SPECTRALIS_SPACING)
    assert rs["pooling"] == kwargs["pooling"] and rs["depth"] == 128


def test_resensnet_fc_conv_spans_remaining_depth():
    net = build_network("resensnet", 1, 1)  # original: (1, 1, 8) at depth 128
    kernels = {fpb.fc[0].kernel_size for fpb in net.fpb}
    assert kernels == {(1, 1, 8)}
    net64 = build_network("resensnet", 1, 1, depth=64)
    assert {fpb.fc[0].kernel_size for fpb in net64.fpb} == {(1, 1, 4)}


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ((1, 1, 32, 128, 250), "A=250 is not divisible by 16"),
        ((1, 1, 30, 128, 256), "B=30 is not divisible by 4"),
        ((1, 1, 32, 120, 256), "D=120 is not divisible by 16"),
        ((1, 1, 32, 48, 256), "below the minimum 64"),
        ((1, 32, 128, 256), "expects input (N, C, B, D, A)"),
    ],
)
def test_fpn_bad_shape_raises(shape, fragment):
    with torch.device("meta"):
        net = build_network("fpn", 1, 1)
    with pytest.raises(ShapeError) as info:
        net(torch.empty(shape, device="meta"))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("name", "shape", "fragment"),
    [
        ("resensnet", (1, 1, 8, 32, 32), "built for depth D=64"),
        ("ipnv2", (1, 1, 8, 128, 32), "built for depth D=64"),
        ("lachinov", (1, 1, 8, 64, 36), "A=36 is not divisible by 8"),
        ("ipn", (1, 1, 8, 60, 32), "D=60 is not divisible by 32"),
        ("ipnv2", (1, 1, 7, 64, 32), "B=7 is not divisible by 2"),
    ],
)
def test_baseline_bad_shape_raises(name, shape, fragment):
    net, _ = _planned(name, (8, 32), 64)
    with pytest.raises(ShapeError) as info:
        net(torch.zeros(shape))
    assert fragment in str(info.value)


def test_ipn_takes_other_depths():
    net, kwargs = _planned("ipn", (8, 32), 64)
    assert kwargs["depth_pools"] == [4, 4, 2, 2]
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 8, 32, 32)).shape == (1, 1, 8, 32)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize(
    ("patch", "depth", "spacing"),
    [
        ((4, 256), 64, (1.0, 1.0)),
        ((48, 64), 32, (1.0, 1.0)),
        ((12, 24), 48, SPECTRALIS_SPACING),
        ((2, 8), 16, (1.0, 1.0)),
        ((3, 5), 8, (1.0, 1.0)),  # no pooling possible: a single level
    ],
)
def test_plan_kwargs_work_for_odd_patches(name, patch, depth, spacing):
    torch.manual_seed(0)
    net, kwargs = _planned(name, patch, depth, 2, spacing)
    # kwargs survive a JSON round trip (the plan stores them) and equal the stored config
    assert json.loads(json.dumps(kwargs)) == kwargs == net.config
    (d_b, d_d, d_a), min_depth = type(net).input_divisors(**kwargs)
    assert patch[0] % d_b == 0 and patch[1] % d_a == 0 and depth % d_d == 0 and depth >= min_depth
    with torch.no_grad():
        y = net.eval()(torch.randn(1, 1, patch[0], depth, patch[1]))
    assert y.shape == (1, 2, *patch)
    assert torch.isfinite(y).all()


def test_anisotropic_plans_pool_only_the_fine_axis():
    steps = plan_enface_pooling((4, 256), (1.0, 1.0), 4)
    assert steps == [[1, 2]] * 4
    steps = plan_enface_pooling((48, 64), (1.0, 1.0), 4)
    assert steps == [[2, 2], [2, 2], [2, 2], [1, 2]]
    # Spectralis: B is 10x coarser, pooled only once A has caught up (the paper's choice)
    assert plan_enface_pooling((32, 256), SPECTRALIS_SPACING, 4) == [[1, 2], [1, 2], [2, 2], [2, 2]]
    # A exhausted by size: B gets pooled although it is the coarse axis
    assert plan_enface_pooling((32, 16), SPECTRALIS_SPACING, 4) == [[1, 2], [1, 2], [2, 1], [2, 1]]
    assert plan_enface_pooling((3, 5), (1.0, 1.0), 4) == []


def test_split_depth():
    assert split_depth(128, 4) == [4, 4, 4, 2]
    assert split_depth(64, 4) == [4, 4, 2, 2]
    assert split_depth(96, 4) == [4, 4, 3, 2]
    assert split_depth(7, 4) == [7]
    assert split_depth(1, 4) == [1]


def test_max_pool_depth_matches_max_pool3d():
    x = torch.randn(2, 3, 4, 12, 5, requires_grad=True)
    ours = max_pool_depth(x, 3, dim=3)
    ref = F.max_pool3d(x, (1, 3, 1))
    assert torch.equal(ours, ref)


def test_init_follows_reference():
    torch.manual_seed(0)
    net = build_network("fpn", 1, 1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d | torch.nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bns])
    assert all(torch.count_nonzero(m.bias) == 0 for m in bns)
    assert abs(weights.mean().item() - 1.0) < 0.01 and 0.01 < weights.std().item() < 0.03
    assert torch.count_nonzero(net.head.bias) == 0


def test_bad_kwargs_raise_fpn_error():
    with pytest.raises(FPNError, match="powers of two"):
        build_network("fpn", 1, 1, pooling=[[1, 2, 3], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    with pytest.raises(FPNError, match="pooling must be 4 steps"):
        build_network("fpn", 1, 1, pooling=[[1, 2, 2]])
    with pytest.raises(FPNError, match="one entry per PLM"):
        build_network("ipn", 1, 1, features=[8, 8], depth_pools=[4, 4, 4])
    with pytest.raises(FPNError, match="rejected its kwargs"):
        build_network("lachinov", 1, 1, fpb_kernel=4)


@pytest.mark.parametrize("name", NETWORKS)
def test_bf16_autocast_and_channels_last(name):
    torch.manual_seed(0)
    net, _ = _planned(name, (4, 16), 16, 2)  # small: CPU bf16 3D convs are slow here
    x = torch.randn(2, 1, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    y.float().square().mean().backward()
    assert y.shape == (2, 2, 4, 16)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        ref = net(x)
        to_channels_last(net)
        out = net(x.contiguous(memory_format=torch.channels_last_3d))
    assert any(p.dim() == 5 and p.is_contiguous(memory_format=torch.channels_last_3d) for p in net.parameters())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NETWORKS)
def test_traces_without_graph_breaks(name):
    """torch.compile (optional in training) sees one graph: the shape check is static Python."""
    import torch._dynamo

    net, _ = _planned(name, (4, 16), 16)
    explanation = torch._dynamo.explain(net)(torch.randn(2, 1, 4, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
