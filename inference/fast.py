"""Model preparation for inference: eval mode, BatchNorm folded into convolutions, channels-last.

::

    net = prepare_for_inference(net, example=torch.randn(1, 1, 4, 128, 16))
    with torch.inference_mode():
        logits = net(channels_last_input(x))

In eval mode a BatchNorm is a fixed per-channel affine map, ``y = g * (x - m) / sqrt(v + eps) + b``;
when its input is the output of a convolution and nothing else, the map is folded into that
convolution's weight and bias (``W' = W * s``, ``b' = (b0 - m) * s + b`` with
``s = g / sqrt(v + eps)``) and the BatchNorm becomes an ``Identity``: one pass over each activation
tensor less, and one kernel launch less per layer.

Which convolution feeds which BatchNorm is found by running ``example`` once with hooks (not from
the module tree), so any network qualifies: a ``Conv1d/2d/3d`` whose output tensor is the input of
exactly one ``BatchNorm1d/2d/3d`` (with running statistics), each called once. A convolution whose
output is also used elsewhere (before the norm) would be folded wrongly, so the folded network is
checked against the original on ``example``; on a mismatch the original is kept (and the reason
recorded in :attr:`FoldReport.skipped`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from fpnunet.networks.layout import channels_last_input, to_channels_last

__all__ = ["FoldReport", "fold_batchnorm", "prepare_for_inference", "example_input", "CONVS", "NORMS"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: ``folded`` (conv name, norm name) pairs, ``norms`` the
    BatchNorm layers seen, ``skipped`` why the folding was abandoned ("" when it was not)."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    norms: int = 0
    skipped: str = ""


def _foldable_norm(m: nn.Module) -> bool:
    # exact types: subclasses (e.g. a norm fused with an activation) do more than the affine map
    return type(m) in NORMS and m.running_mean is not None and m.running_var is not None


def _find_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], int]:
    """(conv name, norm name) pairs where the norm's input is the conv's output tensor."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    conv_outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept alive: ids stay unique
    pairs: list[tuple[str, str]] = []
    norms = [m for m in model.modules() if _foldable_norm(m)]

    def conv_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        conv_outputs[id(out)] = (name, out)

    def norm_hook(module: nn.Module, args: tuple) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        hit = conv_outputs.get(id(args[0])) if args else None
        if hit is not None and hit[1] is args[0]:
            pairs.append((hit[0], name))

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if type(m) in CONVS]
    handles += [m.register_forward_pre_hook(norm_hook) for m in norms]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    conv_uses: dict[str, int] = {}
    for conv, _ in pairs:
        conv_uses[conv] = conv_uses.get(conv, 0) + 1
    kept = [(c, n) for c, n in pairs if calls.get(c) == 1 and calls.get(n) == 1 and conv_uses[c] == 1]
    return kept, len(norms)


@torch.no_grad()
def _fold_pair(conv: nn.Module, norm: nn.Module) -> None:
    scale = norm.weight.float() if norm.weight is not None else torch.ones_like(norm.running_var, dtype=torch.float32)
    shift = norm.bias.float() if norm.bias is not None else torch.zeros_like(scale)
    scale = scale / torch.sqrt(norm.running_var.float() + norm.eps)
    bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight
    new_w = weight.float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    weight.copy_(new_w.to(weight.dtype))
    new_b = ((bias - norm.running_mean.float()) * scale + shift).to(weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_b, requires_grad=False)
    else:
        conv.bias.copy_(new_b)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, *, rtol: float = 1e-3, atol: float = 1e-4) -> FoldReport:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    ``model`` must be in eval mode (folding uses the running statistics); ``example`` is an input
    it accepts, on its device (small is fine: it only traces which tensor goes where and checks
    the result). Returns a :class:`FoldReport`.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it folds the running statistics)")
    pairs, n_norms = _find_pairs(model, example)
    report = FoldReport(norms=n_norms)
    if not pairs:
        return report
    backup = copy.deepcopy(model)
    with torch.no_grad():
        reference = backup(example)
    for conv_name, norm_name in pairs:
        _fold_pair(model.get_submodule(conv_name), model.get_submodule(norm_name))
        _set_module(model, norm_name, nn.Identity())
    with torch.no_grad():
        out = model(example)
    if not (isinstance(out, torch.Tensor) and torch.allclose(out.float(), reference.float(), rtol=rtol, atol=atol)):
        # a convolution output used elsewhere too: put the original back, parameters and all
        for conv_name, norm_name in pairs:
            _set_module(model, conv_name, backup.get_submodule(conv_name))
            _set_module(model, norm_name, backup.get_submodule(norm_name))
        report.skipped = "the folded network's output differed from the original's on the example input"
        return report
    report.folded = pairs
    return report


def prepare_for_inference(
    model: nn.Module,
    example: torch.Tensor | None = None,
    *,
    device: str | torch.device | None = None,
    channels_last: bool = True,
    fold: bool = True,
) -> nn.Module:
    """Eval mode, on ``device``, no gradients, BatchNorm folded (when ``fold`` and an ``example``
    input is given), weights in channels-last (when ``channels_last``). Returns ``model``; the
    :class:`FoldReport` is left in ``model.fold_report``."""
    if device is not None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    report = FoldReport()
    if fold and example is not None:
        example = example.to(next(model.parameters()).device)
        report = fold_batchnorm(model, example)
    if channels_last:
        to_channels_last(model)
    model.fold_report = report  # type: ignore[assignment]
    return model


def example_input(in_channels: int, depth: int, divisors: tuple[int, int], device: str | torch.device = "cpu"
                  ) -> torch.Tensor:
    """A small random input ``(1, C, dB, D, dA)`` the network accepts (its en-face divisors), for
    :func:`prepare_for_inference`, in channels-last."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, in_channels, divisors[0], depth, divisors[1]), generator=gen)
    return channels_last_input(x.to(device))
