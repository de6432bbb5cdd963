"""Speed paths: channels-last on the CPU, BatchNorm folding, whole-plane windows, the bf16 decision."""
from __future__ import annotations

import copy

import pytest
import torch
from inference_nets import DEPTH, ColumnNet, _seeded
from torch import nn

from fpnunet import precision
from fpnunet.inference.fast import fold_batchnorm, prepare_for_inference
from fpnunet.inference.sliding_window import predict_sliding_window
from fpnunet.inference.windows import forward_peak_bytes, overlap_weights, plan_windows
from fpnunet.networks import available_networks, build_network, network_class
from fpnunet.networks.layout import LayoutChecker, channels_last_input, to_channels_last

NETWORKS = [n for n in available_networks() if not n.startswith("_")]
SHAPE = (2, 1, 4, 64, 16)  # (N, C, B, D, A): small, and every network accepts it


def _net(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = network_class(name).plan_kwargs((SHAPE[2], SHAPE[4]), SHAPE[3], (0.12, 0.0113))
    return build_network(name, SHAPE[1], 2, **kwargs)


def _warm_batchnorm(net: nn.Module) -> None:
    """Non-trivial running statistics (a fresh BatchNorm has mean 0, var 1); the same for every
    copy of a network."""
    net.train()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(SHAPE, generator=gen) * 2 + 0.5
            net(channels_last_input(x) if next(net.parameters()).stride(1) == 1 else x)


@pytest.fixture
def two_threads():
    """With one thread PyTorch sends convolutions with a 1x1 spatial tail ((3,1,1), 1x1x1) on
    small batches to its own kernel, which returns the default layout; oneDNN (2+ threads, what
    training uses) keeps channels-last. inference_nets sets one thread for the other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- channels-last
@pytest.mark.parametrize("name", ["fpn", "omnia", "dsnet", "dxnet"])
def test_both_layouts_give_the_same_outputs_and_gradients(name, two_threads):
    ref = _net(name)
    cl = to_channels_last(copy.deepcopy(ref))
    x = torch.randn(SHAPE)
    assert channels_last_input(x).stride(1) == 1
    # training mode: float32 rounding only (oneDNN sums in another order in each layout; both are
    # ~1e-4 of the output's scale off a float64 forward, through 40 batch-statistics BatchNorms)
    out_ref, out_cl = ref(x), cl(channels_last_input(x))
    scale = float(out_ref.detach().abs().max())
    torch.testing.assert_close(out_cl, out_ref, rtol=0, atol=3e-4 * scale)
    # gradients with the BatchNorms on running statistics (batch statistics of 2 random samples
    # make the first layers' gradients ill-conditioned: 1-3 % off float64 in either layout)
    _warm_batchnorm(ref)
    _warm_batchnorm(cl)
    ref.eval(), cl.eval()
    out_ref, out_cl = ref(x), cl(channels_last_input(x))
    torch.testing.assert_close(out_cl, out_ref, rtol=1e-4, atol=1e-4 * scale)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_cl.backward(grad)
    for (name, p), q in zip(ref.named_parameters(), cl.parameters(), strict=True):
        rel = float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
        assert rel < 5e-3, f"{name}: gradients differ by {rel:.2e} (relative norm)"


@pytest.mark.parametrize("name", NETWORKS)
def test_every_op_of_every_network_stays_channels_last(name, two_threads):
    net = to_channels_last(_net(name))
    with LayoutChecker() as check:
        net(channels_last_input(torch.randn(SHAPE))).sum().backward()
    assert check.ops > 50
    assert check.violations == [], f"{name}: ops that left channels-last: {check.violations[:5]}"


def test_slab_means_and_cat_keep_channels_last_with_several_input_channels():
    from fpnunet.networks.layout import cat_channels, is_channels_last
    from fpnunet.networks.omnia import slab_means

    x = torch.randn(2, 3, 5, 32, 7)  # C = 3 (the networks above have one input channel)
    ref = slab_means(x, 4)
    by_hand = torch.stack([x[:, :, :, k * 8:(k + 1) * 8].mean(3) for k in range(4)], 2).reshape(2, 12, 5, 7)
    torch.testing.assert_close(ref, by_hand)
    cl = slab_means(channels_last_input(x), 4)
    assert cl.stride(1) == 1 and is_channels_last(cl)
    torch.testing.assert_close(cl, ref, rtol=1e-6, atol=1e-6)
    skip = torch.randn(2, 1, 5, 7)  # default strides, one channel: plain cat returns the default layout
    assert not torch.cat([skip, cl], 1).is_contiguous(memory_format=torch.channels_last)
    out = cat_channels([skip, cl])
    assert out.is_contiguous(memory_format=torch.channels_last) and out.stride(1) == 1
    torch.testing.assert_close(out, torch.cat([skip, ref], 1), rtol=1e-6, atol=1e-6)
    assert cat_channels([skip, ref]).is_contiguous()  # default layout in, default layout out


def test_layout_checker_catches_a_copy_back(two_threads):
    class CopiesBack(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(2, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x).contiguous())

    net = to_channels_last(CopiesBack())
    with LayoutChecker() as check:
        net(channels_last_input(torch.randn(1, 2, 4, 6, 8)))
    names = [v[0] for v in check.violations]
    assert "aten::relu" in names


# ----------------------------------------------------------------------------- BatchNorm folding
@pytest.mark.parametrize("name", ["fpn", "ipnv2"])
def test_folded_batchnorm_gives_the_same_output(name):
    net = _net(name)
    _warm_batchnorm(net)
    net.eval()
    x = torch.randn(SHAPE)
    with torch.no_grad():
        ref = net(x)
    n_bn = sum(isinstance(m, nn.BatchNorm3d | nn.BatchNorm2d) for m in net.modules())
    prepare_for_inference(net, channels_last_input(torch.randn(1, *SHAPE[1:])))
    assert len(net.fold_report.folded) == n_bn > 0 and net.fold_report.skipped == ""
    assert not any(isinstance(m, nn.BatchNorm3d | nn.BatchNorm2d) for m in net.modules())
    with torch.inference_mode():
        out = net(channels_last_input(x))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_folding_is_abandoned_when_the_conv_output_is_used_twice():
    class PreNormSkip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output is used beside the norm: not foldable

    net = PreNormSkip()
    net.bn.running_mean.fill_(0.7)
    net.bn.running_var.fill_(3.0)
    net.eval()
    x = torch.randn(1, 2, 6, 6)
    ref = net(x).detach()
    report = fold_batchnorm(net, x)
    assert report.folded == [] and "differed" in report.skipped
    assert isinstance(net.bn, nn.BatchNorm2d) and net.conv.bias is not None
    torch.testing.assert_close(net(x), ref)


def test_predictor_leaves_the_training_model_alone():
    from fpnunet.inference.predictor import Predictor
    from fpnunet.plans.plan import Configuration, NetworkSpec, Plan

    net = _net("ipn")
    kwargs = network_class("ipn").plan_kwargs((8, 32), 64, (0.12, 0.0113))
    config = Configuration(network=NetworkSpec("ipn", kwargs), patch_size=(8, 32), batch_size=2, depth=64,
                           data_identifier="depth64", precision="fp32")
    plan = Plan(dataset_name="Dataset999_T", projection_axis=1, num_input_channels=1,
                labels={"background": 0, "GA": 1, "X": 2}, file_ending=".nii.gz", depth_crop=0,
                configurations={"ipn": config}, default_configuration="ipn")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predictor = Predictor([net], plan, "ipn", device="cpu", tta=False)
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert not any(isinstance(m, nn.BatchNorm3d) for m in predictor.networks[0].modules())


# ----------------------------------------------------------------------------- windows
def _plan(budget_bytes: int, plane=(21, 70), patch=(8, 32), flips=4):
    return plan_windows(plane, patch, (1, 1), bytes_per_pixel=100.0, flips=flips, available_bytes=2 * budget_bytes,
                        share=0.5, mode="auto")


def test_window_plan_fits_the_budget():
    whole = _plan(21 * 70 * 100 * 4)
    assert (whole.mode, whole.window, whole.flips_per_forward, whole.num_windows) == ("whole", (21, 70), 4, 1)
    one_flip = _plan(21 * 70 * 100)
    assert (one_flip.mode, one_flip.flips_per_forward) == ("whole", 1)
    tiles = _plan(21 * 40 * 100)
    assert tiles.mode == "tiles" and tiles.estimate_bytes <= tiles.budget_bytes and tiles.num_windows == 2
    assert tiles.starts_a[0] == 0 and tiles.starts_a[-1] + tiles.window[1] == 70
    patch = _plan(100)
    assert patch.mode == "patch" and patch.window == (8, 32) and patch.num_windows == 5 * 4
    assert "safety margin" in whole.describe() and whole.margin_bytes == whole.budget_bytes


def test_overlap_weights_are_one_alone_and_sum_to_one_in_overlaps():
    weights = overlap_weights([0], [0, 30], (21, 40))
    left, right = weights[(0, 0)], weights[(0, 30)]
    total = torch.zeros(21, 70)
    total[:, :40] += left
    total[:, 30:] += right
    torch.testing.assert_close(total, torch.ones(21, 70))
    assert torch.all(left[:, :30] == 1) and torch.all(right[:, 10:] == 1)
    assert torch.all(overlap_weights([0], [0], (5, 7))[(0, 0)] == 1)


@pytest.mark.parametrize("tta", [False, True])
def test_whole_plane_and_larger_windows_equal_the_tiled_result_for_an_equivariant_net(tta):
    net = _seeded(ColumnNet, in_channels=1, num_classes=1)
    volume = torch.randn(1, 21, DEPTH, 70)
    kw = dict(num_outputs=1, tta=tta, channels_last=True)
    tiled = predict_sliding_window([net], volume, (8, 32), **kw)
    for budget in (21 * 70 * 100 * 4, 21 * 70 * 100, 21 * 40 * 100):
        plan = _plan(budget)
        out = predict_sliding_window([net], volume, (8, 32), window_plan=plan, **kw)
        torch.testing.assert_close(out, tiled, rtol=1e-5, atol=1e-6, msg=plan.describe())


def test_inference_estimate_scales_with_the_plane():
    net = _net("fpn")
    small = forward_peak_bytes(net, (1, 1, 8, 64, 32))
    large = forward_peak_bytes(net, (1, 1, 16, 64, 64))
    assert small > 1 * 8 * 64 * 32 * 4 * 16  # at least one 16-channel activation of the first level
    assert 3.6 < large / small < 4.4


# ----------------------------------------------------------------------------- bf16 decision
def test_bf16_needs_native_support_and_a_faster_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FPN_CPU_BF16")  # the suite pins it (conftest); here the decision itself is tested
    calls = []

    def fake_probe(repeats: int = 3) -> float:
        calls.append(1)
        return ratio

    monkeypatch.setattr(precision, "probe_bf16_speed", fake_probe)
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: [])
    ratio = 0.5
    d = precision.cpu_bf16_decision()
    assert not d.use_bf16 and "no native bf16" in d.reason and calls == []

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: ["avx512_bf16"])
    d = precision.cpu_bf16_decision()
    assert d.use_bf16 and d.ratio == 0.5 and "avx512_bf16" in d.reason and len(calls) == 1
    ratio = 2.0
    assert precision.cpu_bf16_decision().use_bf16  # cached: no second probe
    assert len(calls) == 1
    d = precision.cpu_bf16_decision(use_cache=False)
    assert not d.use_bf16 and "2.00x" in d.reason and len(calls) == 2
    assert precision.resolve_cpu_precision("fp32") == ("fp32", "fp32: the plan's precision")


def test_fpn_cpu_bf16_forces_the_decision_without_probe_or_cache(monkeypatch, tmp_path):
    """FPN_CPU_BF16=1/0 forces bf16/fp32 whatever the CPU (no probe, nothing cached); auto or unset
    decides; anything else is a one-line error naming the variable."""
    from fpnunet.errors import FPNError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "probe_bf16_speed", lambda repeats=3: pytest.fail("probed"))
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: [])
    for value, use in (("1", True), ("bf16", True), ("0", False), ("off", False)):
        monkeypatch.setenv("FPN_CPU_BF16", value)
        d = precision.cpu_bf16_decision()
        assert d.use_bf16 is use and d.reason == f"{'bf16' if use else 'fp32'}: forced by FPN_CPU_BF16={value}"
        assert precision.resolve_cpu_precision("bf16")[0] == ("bf16" if use else "fp32")
    assert precision.resolve_cpu_precision("fp32")[0] == "fp32"  # an fp32 plan is never forced to bf16
    assert not (tmp_path / "fpnunet").exists()
    monkeypatch.setenv("FPN_CPU_BF16", "auto")
    assert "no native bf16" in precision.cpu_bf16_decision().reason
    monkeypatch.setenv("FPN_CPU_BF16", "maybe")
    with pytest.raises(FPNError, match=r"^FPN_CPU_BF16='maybe': expected 1 \(force bf16\), 0 \(force fp32\) or auto$"):
        precision.cpu_bf16_decision()


def test_the_suite_runs_machine_independent():
    """conftest pins what the tool would otherwise pick from the machine (tests/conftest.py)."""
    import os

    assert os.environ["FPN_CPU_BF16"] in ("0", "1")
    assert precision.forced_cpu_bf16() is not None
    assert precision._cache_path().parent.parent.name.startswith("fpnunet-test-cache-")
    assert os.environ["OMP_NUM_THREADS"] and os.environ["FPN_N_PROC_DA"]
    assert torch.get_num_threads() == 1
