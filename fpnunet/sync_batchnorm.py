"""BatchNorm whose batch statistics span every rank of a distributed job (SyncBatchNorm).

With a per-GPU batch of 2, BatchNorm's batch statistics are noisy; synchronising them over the
ranks normalises with the statistics of the whole global batch, as one process with the global
batch would. On CUDA this is ``torch.nn.SyncBatchNorm``. PyTorch's SyncBatchNorm refuses CPU
tensors (``ValueError: SyncBatchNorm expected input tensor to be on GPU``, torch 2.13), so on the
CPU (gloo) :class:`AllReduceBatchNorm` does the same computation with differentiable all-reduces:

* per channel, the local sum and count are summed over the ranks -> the global mean; then the
  local sum of squared deviations from it is summed -> the global (biased) variance (two passes,
  no ``E[x^2] - E[x]^2`` cancellation);
* the backward of the sum all-reduce (:class:`_AllReduceSum`) all-reduces the gradients, so each
  rank's input gradient includes what the other ranks' losses owe to the shared statistics: one
  step over ``W`` ranks with batch ``b`` equals one step of one process over the ``W b`` samples
  (tests/test_distributed.py checks it);
* running statistics are updated as BatchNorm does (momentum, or the cumulative average when
  ``momentum is None``; unbiased variance), identically on every rank.

In evaluation mode, or without a process group of more than one rank, it is plain BatchNorm. The
parameters and buffers are those of the layer it replaces (same names in ``state_dict``), so
checkpoints load into the ordinary network.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        import torch.distributed as dist

        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``tensor`` over the ranks."""
    return _AllReduceSum.apply(tensor)


def _synchronising(module: _BatchNorm) -> bool:
    import torch.distributed as dist

    return bool(module.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm over any ``(N, C, ...)`` input with statistics all-reduced over the ranks."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not _synchronising(self):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n.detach() / torch.clamp(n.detach() - 1, min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def _replace(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm | nn.SyncBatchNorm):
        new = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        replaced = _replace(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def convert_sync_batchnorm(model: nn.Module, device: str) -> nn.Module:
    """Turn ``model``'s BatchNorm layers into synchronised ones, in place where they are children
    (the parameters and buffers are kept, so an optimizer built before still holds them):
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm` elsewhere. Returns the model
    (a new module only when ``model`` itself is a BatchNorm layer)."""
    if str(device).startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place unless model is a BatchNorm
    return _replace(model)
