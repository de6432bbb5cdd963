"""Training-memory estimator: measured from the real network, not a proxy.

The planner needs, for a network and an input ``(N, C, B, D, A)``, the peak memory of one
training step. It is estimated without touching real memory:

1. the network is copied onto the ``meta`` device (shapes and dtypes only, no data);
2. one forward pass plus a stand-in loss runs under
   :func:`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps
   for the backward pass; their bytes are summed, de-duplicated by storage (a tensor saved by
   two ops, or a view of it, counts once) and without the parameters and buffers (those are
   counted once, as weights);
3. weights, gradients, optimizer state, the live tensors of the backward pass and a workspace
   margin are added (:func:`estimate_training_memory`).

What the total is comparable with: ``torch.cuda.max_memory_allocated()`` over a training step
(:func:`calibrate_cuda` measures exactly that). It does **not** include the CUDA context
(300-600 MB, outside PyTorch's allocator) nor memory the caching allocator reserves but has not
handed out; the planner keeps a fixed reserve for the context off its budget and the workspace
margin covers fragmentation (see :data:`DEFAULT_WORKSPACE_FRACTION`).

bf16: autocast has no ``meta`` backend, so mixed precision is modelled by casting the model
copy and the input to ``bfloat16``. Under real CUDA autocast the activations of convolutions
and batch/instance norms are bf16 as well (cuDNN normalises bf16 input with fp32 statistics),
so the saved tensors match, with three known differences that are added explicitly:

* the fp32 input batch stays alive beside the bf16 copy the first convolution saves;
* autocast caches a bf16 copy of every weight matrix/kernel (saved for backward);
* ``GroupNorm``/``LayerNorm`` run in fp32 under autocast: their input copy and the fp32 output
  (saved again by the activation after it, plus the bf16 copy the next convolution takes) cost
  about 6 more bytes per output element than the cast model counts.

Other fp32-list ops (softmax, losses, upsampling on some versions) act on the 2D en-face
output and are small; they fall inside the workspace margin.

Usage::

    est = estimate_training_memory(net, (2, 1, 32, 128, 256), precision="bf16")
    est.total_bytes, est.activation_bytes
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.layout import channels_last_input, to_channels_last
from fpnunet.plans.plan import MemoryEstimate

PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("sgd", "adam", "adamw")

DEFAULT_WORKSPACE_FRACTION = 0.15
"""Workspace margin as a share of the activation bytes: cuDNN convolution workspaces (with
``cudnn.benchmark`` the fastest 3D algorithms take scratch space of the order of a tenth of an
activation tensor), the fp32 temporaries of autocast's fp32-list ops, and allocator
fragmentation (the caching allocator splits 2-20 MB segments; a few per cent of the dynamic
memory stays unusable). 15 % of the memory that scales with the batch covers these with room."""

DEFAULT_WORKSPACE_MIN_BYTES = 256 * 2**20
"""Floor of the workspace margin (256 MiB): small inputs still get cuBLAS/cuDNN handles'
workspaces (cuBLAS alone reserves up to 32 MiB per stream) and a few unsplittable segments."""

_FP32_NORMS = (nn.GroupNorm, nn.LayerNorm)  # autocast runs these in fp32
_AUTOCAST_FP32_EXTRA_BYTES_PER_ELEMENT = 6


@dataclass
class ActivationCount:
    """What one forward pass plus loss keeps for the backward pass.

    ``saved_bytes``: bytes of the tensors saved for backward (storage de-duplicated, parameters
    and buffers excluded); ``largest_bytes``: the largest single saved storage; ``num_tensors``:
    distinct storages saved; ``input_bytes``/``output_bytes``: the input batch and the network
    output (logits) in the dtype they had.
    """

    saved_bytes: int
    largest_bytes: int
    num_tensors: int
    input_bytes: int
    output_bytes: int
    output_shape: tuple[int, ...]
    norm_fp32_elements: int = 0
    """Output elements of GroupNorm/LayerNorm layers (autocast runs them in fp32)."""


# ----------------------------------------------------------------------------- helpers
def _check_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise FPNError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 5 or min(shape) < 1:
        raise FPNError(f"input_shape must be (N, C, B, D, A) with positive sizes, got {tuple(input_shape)}")
    return shape


def _storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (works on meta, where every ``data_ptr`` is 0)."""
    return t.untyped_storage()._cdata


def _storage_nbytes(t: torch.Tensor) -> int:
    return int(t.untyped_storage().nbytes())


def copy_to_device(network: nn.Module, device: str | torch.device) -> nn.Module:
    """A deep copy of ``network`` on ``device``, never staging a copy on the source device.

    Parameters and buffers are put on ``device`` through the deepcopy memo: onto ``meta`` they
    become empty (copying a GPU network onto ``meta`` allocates nothing); from ``meta`` onto a
    real device parameters are drawn from N(0, 0.02) and buffers zeroed (memory measurement
    only); between real devices values are copied.
    """
    device = torch.device(device)
    memo: dict[int, object] = {}
    for module in network.modules():
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is None or id(t) in memo or t.device == device:
                    continue
                if device.type == "meta":
                    new = torch.empty_like(t, device=device)
                elif t.device.type == "meta":
                    new = torch.zeros_like(t, device=device)
                    if isinstance(t, nn.Parameter) and new.is_floating_point():
                        new.normal_(0.0, 0.02)
                else:
                    new = t.detach().to(device, copy=True)
                if isinstance(t, nn.Parameter):
                    new = nn.Parameter(new, requires_grad=t.requires_grad)
                memo[id(t)] = new
    return copy.deepcopy(network, memo)


def stand_in_loss(logits: torch.Tensor) -> torch.Tensor:
    """The training loss's memory footprint: (soft Dice + BCE) for one output channel, Dice +
    cross-entropy for several, computed in fp32 like autocast does. ``logits``: ``(N, K, B, A)``.

    The values are meaningless (the target is all background); only the saved tensors matter.
    """
    logits = logits.float()
    dims = tuple(range(2, logits.ndim))
    if logits.shape[1] == 1:
        target = torch.zeros_like(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits)
    else:
        index = torch.zeros((logits.shape[0], *logits.shape[2:]), dtype=torch.long, device=logits.device)
        ce = F.cross_entropy(logits, index)
        prob = torch.softmax(logits, 1)
        target = torch.zeros_like(prob)
    inter = (prob * target).sum(dims)
    dice = (2 * inter + 1) / (prob.sum(dims) + target.sum(dims) + 1)
    return ce + (1 - dice).mean()


def _count(network: nn.Module, x: torch.Tensor, with_loss: bool = True) -> ActivationCount:
    """Run forward (+ stand-in loss) on ``x`` (same device as ``network``) counting saved tensors."""
    network.train()
    excluded = {_storage_key(t) for t in network.parameters()}
    excluded |= {_storage_key(t) for t in network.buffers()}
    saved: dict[int, torch.Tensor] = {}  # holding them keeps the keys unique (no storage reuse)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in excluded and key not in saved:
            saved[key] = t
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    norm_elements = 0

    def norm_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal norm_elements
        if isinstance(out, torch.Tensor):
            norm_elements += out.numel()

    handles = [m.register_forward_hook(norm_hook) for m in network.modules() if isinstance(m, _FP32_NORMS)]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            out = network(x)
            if not isinstance(out, torch.Tensor):
                raise FPNError(f"{type(network).__name__} returned {type(out).__name__}, expected a tensor")
            out_shape, out_bytes = tuple(out.shape), out.numel() * out.element_size()
            loss = stand_in_loss(out) if with_loss else out
    finally:
        for h in handles:
            h.remove()
    del loss, out
    sizes = [_storage_nbytes(t) for t in saved.values()]
    return ActivationCount(
        saved_bytes=sum(sizes),
        largest_bytes=max(sizes, default=0),
        num_tensors=len(sizes),
        input_bytes=x.numel() * x.element_size(),
        output_bytes=out_bytes,
        output_shape=out_shape,
        norm_fp32_elements=norm_elements,
    )


def count_activations(
    network: nn.Module,
    input_shape: Sequence[int],
    precision: str = "fp32",
    device: str | torch.device = "meta",
    *,
    with_loss: bool = True,
) -> ActivationCount:
    """Count what one training forward keeps for backward, on ``device`` (``meta``: no memory).

    ``network`` is not modified (a copy is cast/moved); ``input_shape`` is ``(N, C, B, D, A)``.
    bf16 is modelled by casting the copy and the input to ``bfloat16`` (see the module notes).
    ``with_loss``: run :func:`stand_in_loss` on the output too (what training does).
    """
    dtype = _check_precision(precision)
    shape = _check_shape(input_shape)
    device = torch.device(device)
    net = copy_to_device(network, device).to(dtype)
    x = torch.randn(shape, dtype=dtype, device=device) if device.type != "meta" else torch.empty(
        shape, dtype=dtype, device=device
    )
    return _count(net, x, with_loss)


def count_saved_activation_bytes(
    network: nn.Module, input_shape: Sequence[int], precision: str = "fp32", device: str | torch.device = "meta"
) -> int:
    """Bytes of the tensors one forward pass plus loss saves for backward, on ``meta`` by default.

    De-duplicated by storage; parameters and buffers are excluded. ``input_shape`` is
    ``(N, C, B, D, A)``; ``precision`` ``"fp32"`` or ``"bf16"`` (model and input cast to bf16).
    """
    return count_activations(network, input_shape, precision, device).saved_bytes


def measure_cpu_activation_bytes(network: nn.Module, input_shape: Sequence[int], precision: str = "fp32") -> int:
    """The same count with real tensors on the CPU (a real forward of a copy of ``network``).

    Used to check that the ``meta`` count is faithful; allocates the activations for real.
    """
    return count_saved_activation_bytes(network, input_shape, precision, device="cpu")


def _param_stats(network: nn.Module) -> tuple[int, int, int]:
    """(parameter elements, buffer bytes at their dtype, elements of weight kernels/matrices)."""
    n_params = sum(p.numel() for p in network.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in network.buffers())
    n_weights = sum(p.numel() for p in network.parameters() if p.ndim >= 2)
    return n_params, buffer_bytes, n_weights


def estimate_training_memory(
    network: nn.Module,
    input_shape: Sequence[int],
    *,
    precision: str = "fp32",
    optimizer: str = "sgd",
    momentum: bool = True,
    workspace_fraction: float = DEFAULT_WORKSPACE_FRACTION,
    workspace_min_bytes: int = DEFAULT_WORKSPACE_MIN_BYTES,
) -> MemoryEstimate:
    """Peak memory of one training step of ``network`` on ``input_shape`` ``(N, C, B, D, A)``.

    Components (bytes):

    * ``activation_bytes``: tensors saved for backward (counted on ``meta``), plus the live
      tensors of backward: the gradient reaching a layer and the one it produces (at most twice
      the largest saved tensor) and the output's gradient; for bf16 also the fp32 input batch,
      autocast's bf16 weight copies and the fp32 norms' extra bytes (module notes);
    * ``parameter_bytes``: fp32 parameters (AMP keeps fp32 master weights) plus buffers;
    * ``gradient_bytes``: fp32 gradients, one per parameter;
    * ``optimizer_bytes``: SGD with momentum one fp32 buffer per parameter (none without),
      Adam/AdamW two;
    * ``workspace_bytes``: ``max(workspace_min_bytes, workspace_fraction * activation_bytes)``.

    ``total_bytes`` is their sum, comparable with ``torch.cuda.max_memory_allocated()`` (CUDA
    context excluded). ``network`` may live on any device; it is copied to ``meta``.
    """
    if optimizer not in OPTIMIZERS:
        raise FPNError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    if workspace_fraction < 0 or workspace_min_bytes < 0:
        raise FPNError("workspace_fraction and workspace_min_bytes must be >= 0")
    count = count_activations(network, input_shape, precision, device="meta")
    n_params, buffer_bytes, n_weights = _param_stats(network)
    transient = 2 * count.largest_bytes + 2 * math.prod(count.output_shape) * 4
    activation = count.saved_bytes + transient
    if precision == "bf16":
        activation += math.prod(input_shape) * 4  # the fp32 batch beside its bf16 copy
        activation += n_weights * 2  # autocast's cached bf16 weight copies
        activation += count.norm_fp32_elements * _AUTOCAST_FP32_EXTRA_BYTES_PER_ELEMENT
    parameter = n_params * 4 + buffer_bytes
    gradient = n_params * 4
    states = 2 if optimizer in ("adam", "adamw") else (1 if momentum else 0)
    opt = states * n_params * 4
    workspace = max(int(workspace_min_bytes), int(math.ceil(workspace_fraction * activation)))
    total = activation + parameter + gradient + opt + workspace
    return MemoryEstimate(
        activation_bytes=int(activation),
        parameter_bytes=int(parameter),
        gradient_bytes=int(gradient),
        optimizer_bytes=int(opt),
        workspace_bytes=int(workspace),
        total_bytes=int(total),
        precision=precision,
    )


def _train_step(net: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer, precision: str) -> None:
    """One step: forward (bf16 autocast for ``bf16``), stand-in loss, backward, optimizer step."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = stand_in_loss(net(x))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def calibrate_cuda(
    network: nn.Module,
    input_shape: Sequence[int],
    precision: str = "bf16",
    optimizer: str = "sgd",
    *,
    channels_last: bool = False,
    device: str | torch.device = "cuda",
) -> int:
    """Peak bytes allocated by one real training step on CUDA (``max_memory_allocated``).

    A copy of ``network`` (any device, ``meta`` included: its weights are then random) runs a
    warm-up step (``cudnn.benchmark`` algorithm search, optimizer state), then the peak is reset
    and a second step is measured: forward (bf16 autocast when ``precision == "bf16"``), the
    stand-in loss, backward, optimizer step. Returns the peak minus what was allocated before
    the copy was made, i.e. the step's own memory, CUDA context excluded.
    Raises :class:`FPNError` when CUDA is not available.
    """
    _check_precision(precision)
    shape = _check_shape(input_shape)
    if optimizer not in OPTIMIZERS:
        raise FPNError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    if not torch.cuda.is_available():
        raise FPNError("memory calibration needs a CUDA GPU, and CUDA is not available on this machine")
    device = torch.device(device)
    benchmark = torch.backends.cudnn.benchmark
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    try:
        torch.backends.cudnn.benchmark = True
        net = copy_to_device(network, device)
        net.train()
        if channels_last:  # as training runs it (nn.Module.to raises on the 2D decoders' 4D weights)
            net = to_channels_last(net)
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        elif optimizer == "adam":
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(shape, device=device)
        if channels_last:
            x = channels_last_input(x)
        _train_step(net, x, opt, precision)  # warm-up: cuDNN algorithm search, optimizer state
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        _train_step(net, x, opt, precision)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del net, opt, x
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.cuda.empty_cache()
    return int(peak)
