"""Tiny networks with known outputs for the inference tests (registered by name for model folders)."""
from __future__ import annotations

import torch
from torch import nn

from fpnunet.networks import SegNetwork, register

torch.set_num_threads(1)

DEPTH = 16


@register("_inference_test_column")
class ColumnNet(SegNetwork):
    """1x1x1 convs, ReLU, mean over depth: each en-face pixel sees only its own A-scan
    (translation- and flip-equivariant on the en-face plane)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, hidden: int = 4):
        super().__init__()
        self.config = {"hidden": hidden}
        self.conv1 = nn.Conv3d(in_channels, hidden, 1)
        self.conv2 = nn.Conv3d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, B, D, A) -> (N, K, B, A)
        return self.conv2(torch.relu(self.conv1(x))).mean(dim=3)


class SkewNet(nn.Module):
    """An asymmetric (3, 1, 3) conv then the depth mean: NOT flip-equivariant."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, num_classes, (3, 1, 3), padding=(1, 0, 1))
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1.0, 2.0, self.conv.weight.numel()).view_as(self.conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=3)


class ConstNet(nn.Module):
    """Logits ``(N, K, B, A)`` equal to ``values`` everywhere, whatever the input."""

    def __init__(self, values: list[float]):
        super().__init__()
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, b, _, a = x.shape
        return self.values.view(1, -1, 1, 1).expand(n, -1, b, a).clone()


class DivisorCheckNet(ColumnNet):
    """A column net that insists on en-face sizes divisible by (4, 16)."""

    @classmethod
    def input_divisors(cls, **kwargs):
        return (4, 1, 16), 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] % 4 == 0 and x.shape[4] % 16 == 0, x.shape
        return super().forward(x)


def _seeded(cls, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kwargs).eval()


def _column_truth(net: ColumnNet, volume: torch.Tensor, num_outputs: int) -> torch.Tensor:
    with torch.no_grad():
        logits = ColumnNet.forward(net, volume[None])[0]
    return torch.sigmoid(logits) if num_outputs == 1 else torch.softmax(logits, dim=0)
