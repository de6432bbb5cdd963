"""Memory layout of the networks: ``channels_last_3d`` on every device, and a checker for it.

FPN's convolutions are ``(1,3,3)`` within a B-scan and ``(3,1,1)`` across B-scans. In
``channels_last_3d`` (channels innermost) each is a 2D convolution on a free view, and oneDNN
(CPU) and cuDNN (CUDA) run it much faster than on the default layout. Training and prediction
therefore put the weights in channels-last (:func:`to_channels_last`) and feed channels-last
inputs (:func:`channels_last_input`); the convolutions then produce channels-last outputs and
every later op keeps the layout.

Usage::

    net = to_channels_last(net)
    out = net(channels_last_input(x))
    with LayoutChecker() as check:          # which ops left channels-last?
        net(channels_last_input(x)).sum().backward()
    check.violations                        # [] when the layout is kept throughout

:class:`LayoutChecker` is a ``TorchDispatchMode``: it sees every aten op of the forward and
backward passes (what the profiler lists) and records each op whose 4D/5D floating-point output
is in neither channels-last layout (a silent copy back to the default layout would show up here
as the ops after it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "to_channels_last", "channels_last_input", "is_channels_last", "cat_channels", "depth_last", "pool_mean",
    "LayoutChecker",
]


def to_channels_last(module: nn.Module) -> nn.Module:
    """Put 5D parameters/buffers in ``channels_last_3d`` and 4D ones in ``channels_last``, in place.

    ``module.to(memory_format=torch.channels_last_3d)`` raises on the 4D weights of the 2D
    decoders and heads these networks have; use this instead. Returns ``module``.

    A kernel with one input channel (the first convolution of a one-channel network) is both
    layouts at once by its strides, and the convolution then picks the default layout for its
    output; such kernels get explicit channels-last strides (channel stride 1) so that the
    convolution's output is channels-last from the first layer on.
    """
    for sub in module.modules():
        for tensors in (sub._parameters, sub._buffers):
            for t in tensors.values():
                if t is not None and t.dim() in (4, 5):
                    t.data = channels_last_input(t.data)
    return module


def _channels_last_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a dense channels-last tensor: channels innermost (stride 1), then the spatial
    dims from last to first, then N; size-1 dims keep the formula's stride (unambiguous)."""
    c = shape[1]
    strides = [0] * len(shape)
    strides[1] = 1
    acc = c
    for d in range(len(shape) - 1, 1, -1):
        strides[d] = acc
        acc *= shape[d]
    strides[0] = acc
    return tuple(strides)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``channels_last_3d`` (5D) or ``channels_last`` (4D); other tensors unchanged.

    Unlike ``x.contiguous(memory_format=...)``, a tensor with one channel gets explicit
    channels-last strides (channel stride 1) instead of keeping its default ones (which
    ``is_contiguous`` accepts for both layouts, so the next convolution would not see it as
    channels-last).
    """
    if x.dim() not in (4, 5):
        return x
    strides = _channels_last_strides(tuple(x.shape))
    if tuple(x.stride()) == strides:
        return x
    if x.shape[1] > 1 and min(x.shape[2:], default=2) > 1:
        fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        return x.contiguous(memory_format=fmt)
    out = torch.empty_strided(tuple(x.shape), strides, dtype=x.dtype, device=x.device)
    out.copy_(x)
    return out


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4D/5D tensor is channels-last (a tensor with one channel, or one voxel per channel
    plane, is both layouts at once and counts as channels-last)."""
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d)
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return True


def _has_channel_stride_one(t: torch.Tensor) -> bool:
    """A 4D/5D tensor with several channels stored innermost (channels-last, unambiguously)."""
    return t.dim() in (4, 5) and t.shape[1] > 1 and t.stride(1) == 1 and t[0, 0].numel() > 1


def cat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)`` that stays channels-last when any input is.

    ``cat`` returns the default layout as soon as its inputs disagree (a one-channel skip, or slab
    means, next to a channels-last feature map), and the next convolution then works on the default
    layout. Here, when one input is channels-last, the others are put in channels-last first
    (:func:`channels_last_input`; a no-op for those already there) and the result is channels-last.
    """
    tensors = list(tensors)
    if any(_has_channel_stride_one(t) for t in tensors):
        tensors = [channels_last_input(t) for t in tensors]
    return torch.cat(tensors, dim=1)


def depth_last(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, B, D, A) -> (N, C, B, A, D)`` (the axis order of FPN's 3D layers), in the layout of ``x``.

    The permuted view of a channels-last input is in neither layout, and every convolution on it
    would copy it back to the default one (forward and backward); a channels-last input therefore
    gets one explicit copy into ``channels_last_3d`` (of the ``C``-channel input, the smallest
    tensor of the network). A default-layout input stays a free view.
    """
    was_channels_last = x.stride(1) == 1 and x.shape[1] * x.stride(1) < x.stride(0)
    x = x.permute(0, 1, 2, 4, 3)
    return channels_last_input(x) if was_channels_last else x


class _PoolMean(torch.autograd.Function):
    """Average pooling along one axis (window = stride = ``factor``) that keeps the layout.

    On the CPU ``mean`` and ``avg_pool3d`` return the default layout for a channels-last input,
    and the backward of a sum of slices (``stack``/``slice_backward``) too. Forward: the sum of
    the ``factor`` strided slices (elementwise adds keep the layout of their inputs); backward:
    the gradient written into a tensor with the input's strides.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:  # noqa: ANN001
        ctx.shape, ctx.stride, ctx.dim, ctx.factor = x.shape, x.stride(), dim, factor
        idx = [slice(None)] * x.dim()
        total = None
        for i in range(factor):
            idx[dim] = slice(i, None, factor)
            part = x[tuple(idx)]
            total = part if total is None else total + part
        return total / factor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        out = torch.empty_strided(ctx.shape, ctx.stride, dtype=grad.dtype, device=grad.device)
        g = grad / ctx.factor
        idx = [slice(None)] * len(ctx.shape)
        for i in range(ctx.factor):
            idx[ctx.dim] = slice(i, None, ctx.factor)
            out[tuple(idx)] = g
        return out, None, None


def pool_mean(x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """Average pooling of ``x`` along ``dim`` with window and stride ``factor`` (the size along
    ``dim`` must be divisible by it), in the layout of ``x``; differentiable. ``factor`` equal to
    the size gives the mean with ``dim`` kept at size 1."""
    dim = dim % x.dim()
    if x.shape[dim] % factor:
        raise ValueError(f"pool_mean: size {x.shape[dim]} along dim {dim} is not divisible by {factor}")
    if factor == 1:
        return x
    return _PoolMean.apply(x, dim, int(factor))


@dataclass
class LayoutChecker(TorchDispatchMode):
    """Record the aten ops whose 4D/5D floating-point outputs are not channels-last.

    ``violations``: ``(op name, output shape, strides)`` per offending op, in call order.
    ``ops``: number of ops seen. Views (``permute``, ``select``, ...) and in-place ops (which
    write into a tensor that already exists, e.g. a slice of a channels-last gradient) are
    skipped: what matters is the layout the next compute op receives, which its own output
    reveals. Outputs with a single channel (C == 1) are ignored (both layouts).
    """

    violations: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ops: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if func.is_view or func._schema.is_mutable or func._overloadpacket in _IGNORED:
            return out
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.dim() in (4, 5) and t.is_floating_point()
                    and t.shape[1] > 1 and t[0, 0].numel() > 1 and not is_channels_last(t)):
                self.violations.append((str(func.name()), tuple(t.shape), tuple(t.stride())))
        return out


_IGNORED = {
    torch.ops.aten.randn, torch.ops.aten.empty, torch.ops.aten.zeros, torch.ops.aten.ones,
    torch.ops.aten.normal_, torch.ops.aten.uniform_, torch.ops.aten.rand,
}
