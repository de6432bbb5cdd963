"""The memory estimator: the meta-device count matches a real CPU count, and the estimate's parts
behave (optimizer state, precision, batch size). Small inputs only (CPU, one thread)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.plans.memory import (
    DEFAULT_WORKSPACE_MIN_BYTES,
    _train_step,
    calibrate_cuda,
    copy_to_device,
    count_activations,
    count_saved_activation_bytes,
    estimate_training_memory,
    measure_cpu_activation_bytes,
)

torch.set_num_threads(1)


class TinyProjector(nn.Module):
    """``(N, C, B, D, A) -> (N, K, B, A)``: conv3d + BN + ReLU, mean over depth, 1x1 head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 3, padding=1, bias=False), nn.GroupNorm(2, width), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=3))


class SquareTwice(nn.Module):
    """Saves its input once (for the scale's gradient) and ``h`` twice (``h * h``)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.scale
        return (h * h).mean(dim=3)


def _fpn(patch=(8, 32), depth=64):
    from fpnunet.networks import build_network, network_class

    kwargs = network_class("fpn").plan_kwargs(patch, depth, (0.12, 0.0113))
    return build_network("fpn", 1, 1, **kwargs), (2, 1, patch[0], depth, patch[1])


def test_meta_count_matches_cpu_count_small_module():
    net, shape = TinyProjector(), (2, 1, 4, 8, 8)
    meta = count_saved_activation_bytes(net, shape)
    cpu = measure_cpu_activation_bytes(net, shape)
    assert meta > 0
    assert abs(meta - cpu) <= 0.05 * cpu


def test_meta_count_matches_cpu_count_fpn():
    net, shape = _fpn()
    meta = count_saved_activation_bytes(net, shape)
    cpu = measure_cpu_activation_bytes(net, shape)
    assert abs(meta - cpu) <= 0.05 * cpu
    # the network itself stays where it was, untouched
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_multiclass_output_uses_cross_entropy_path():
    net, shape = TinyProjector(num_classes=3), (2, 1, 4, 8, 8)
    count = count_activations(net, shape)
    assert count.output_shape == (2, 3, 4, 8)
    assert abs(count.saved_bytes - measure_cpu_activation_bytes(net, shape)) <= 0.05 * count.saved_bytes


def test_storage_deduplicated_and_parameters_excluded():
    shape = (2, 1, 4, 8, 8)
    count = count_activations(SquareTwice(), shape, with_loss=False)
    numel = 2 * 1 * 4 * 8 * 8
    # x (saved by x * scale) and h (saved twice by h * h) count once each; the scale not at all
    assert count.saved_bytes == 2 * numel * 4
    assert count.num_tensors == 2
    assert count.largest_bytes == numel * 4


def test_components_add_up():
    net, shape = TinyProjector(), (2, 1, 4, 8, 8)
    n = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    est = estimate_training_memory(net, shape, precision="fp32", optimizer="sgd", momentum=True)
    parts = est.activation_bytes + est.parameter_bytes + est.gradient_bytes + est.optimizer_bytes + est.workspace_bytes
    assert est.total_bytes == parts
    assert est.parameter_bytes == 4 * n + buffers
    assert est.gradient_bytes == 4 * n
    assert est.optimizer_bytes == 4 * n
    assert est.activation_bytes > count_saved_activation_bytes(net, shape)  # + backward transients
    assert est.workspace_bytes == DEFAULT_WORKSPACE_MIN_BYTES  # small input: the floor applies
    assert est.precision == "fp32"
    none = estimate_training_memory(net, shape, momentum=False)
    assert none.optimizer_bytes == 0


def test_adam_needs_more_than_sgd():
    net, shape = _fpn()
    sgd = estimate_training_memory(net, shape, optimizer="sgd")
    adam = estimate_training_memory(net, shape, optimizer="adam")
    assert adam.total_bytes > sgd.total_bytes
    assert adam.optimizer_bytes == 2 * sgd.optimizer_bytes


def test_bf16_activations_smaller_than_fp32():
    net, shape = _fpn()
    assert count_saved_activation_bytes(net, shape, "bf16") < 0.6 * count_saved_activation_bytes(net, shape, "fp32")
    fp32 = estimate_training_memory(net, shape, precision="fp32")
    bf16 = estimate_training_memory(net, shape, precision="bf16")
    assert bf16.activation_bytes < fp32.activation_bytes
    assert bf16.parameter_bytes == fp32.parameter_bytes  # AMP keeps fp32 master weights


def test_bf16_counts_fp32_norms():
    """GroupNorm runs in fp32 under autocast: the bf16 estimate charges its elements extra."""
    count = count_activations(TinyProjector(), (2, 1, 4, 8, 8), "bf16")
    assert count.norm_fp32_elements == 2 * 4 * 4 * 8 * 8


def test_memory_grows_with_batch_and_patch():
    net, _ = _fpn()
    totals = [
        estimate_training_memory(net, (b, 1, 8, 64, 32), workspace_min_bytes=0).total_bytes for b in (1, 2, 4, 8)
    ]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    acts = [estimate_training_memory(net, (b, 1, 8, 64, 32)).activation_bytes for b in (2, 4)]
    assert acts[1] == pytest.approx(2 * acts[0], rel=0.05)  # activations scale with the batch
    big = estimate_training_memory(net, (2, 1, 16, 64, 32))
    assert big.activation_bytes > acts[0]


def test_workspace_fraction_applies_above_floor():
    net, shape = _fpn()
    est = estimate_training_memory(net, shape, workspace_fraction=0.5, workspace_min_bytes=0)
    assert est.workspace_bytes == pytest.approx(0.5 * est.activation_bytes, abs=1)


def test_estimate_from_meta_network_equals_cpu_network():
    net, shape = _fpn()
    meta_net = copy_to_device(net, "meta")
    assert all(p.device.type == "meta" for p in meta_net.parameters())
    assert estimate_training_memory(meta_net, shape) == estimate_training_memory(net, shape)


def _cpu_step_peak(net: nn.Module, shape: tuple[int, ...]) -> int:
    """Peak bytes allocated during one real CPU training step (torch profiler memory events),
    plus the parameters and momentum buffers allocated before it."""
    profiler = pytest.importorskip("torch.profiler")
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(shape)
    _train_step(net, x, opt, "fp32")  # creates the momentum buffers
    with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        _train_step(net, x, opt, "fp32")
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        records = sorted((e.start_ns(), e.nbytes()) for e in events)
    except AttributeError:
        pytest.skip("this torch's profiler does not expose memory events")
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    resident = sum(p.numel() * 8 for p in net.parameters()) + sum(b.numel() * b.element_size() for b in net.buffers())
    return peak + resident


def test_estimate_bounds_a_real_cpu_step():
    """Before the workspace margin the estimate is an upper bound of a real step's peak, and not
    a loose one."""
    net, shape = _fpn((8, 64))
    measured = _cpu_step_peak(net, shape)
    est = estimate_training_memory(net, shape, workspace_fraction=0, workspace_min_bytes=0)
    assert measured <= est.total_bytes <= 1.3 * measured


def test_copy_from_meta_to_cpu_trains():
    with torch.device("meta"):
        meta = TinyProjector()
    net = copy_to_device(meta, "cpu")
    assert all(torch.isfinite(p).all() and p.device.type == "cpu" for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    _train_step(net, torch.randn(2, 1, 4, 8, 8), opt, "fp32")


def test_errors():
    net = TinyProjector()
    with pytest.raises(FPNError, match="precision"):
        count_saved_activation_bytes(net, (2, 1, 4, 8, 8), precision="fp16")
    with pytest.raises(FPNError, match="optimizer"):
        estimate_training_memory(net, (2, 1, 4, 8, 8), optimizer="lion")
    with pytest.raises(FPNError, match="input_shape"):
        estimate_training_memory(net, (2, 4, 8, 8))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_calibrate_without_cuda_raises():
    with pytest.raises(FPNError, match="CUDA"):
        calibrate_cuda(TinyProjector(), (2, 1, 4, 8, 8), "bf16", "sgd")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_calibrated_peak_within_estimate():
    net, shape = _fpn((16, 64))
    peak = calibrate_cuda(net, shape, "bf16", "sgd")
    est = estimate_training_memory(net, shape, precision="bf16")
    assert 0 < peak <= est.total_bytes
