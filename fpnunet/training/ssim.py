"""Structural similarity (SSIM) on en-face images, restricted to valid pixels, and its loss.

The pretraining loss of Morano et al. (MICCAI 2023) is ``1 - SSIM`` with an 11 x 11 Gaussian
window of sigma 1.5 (Wang et al. 2004, constants ``K1 = 0.01``, ``K2 = 0.03``, population
(co)variances). Shapes: images ``(N, 1, B, A)`` (any channel count ``C`` works, channels are
averaged), a validity mask of the same shape or ``(N, 1, B, A)``, 1 on real pixels and 0 on
padding.

Which SSIM-map pixels count, per sample:

* every pixel whose whole window lies inside the image *and* inside the mask ("full windows").
  With an all-ones mask this is exactly ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``, which crops
  the border half a window wide before averaging;
* when a sample has no full window at all (its valid region is narrower than the window), its
  valid pixels instead, with local statistics computed by normalised convolution (the Gaussian
  weights restricted to valid pixels and renormalised), so that a tiny valid region still gives
  a signal and padding never does.

Padded pixels therefore never influence the value nor receive a gradient. Computation is in
float32 whatever the input precision.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import ShapeError
from fpnunet.training.losses import LOSSES

WINDOW_SIZE = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03

__all__ = ["WINDOW_SIZE", "SIGMA", "gaussian_kernel1d", "ssim_map", "ssim", "SSIMLoss"]


def gaussian_kernel1d(window_size: int = WINDOW_SIZE, sigma: float = SIGMA,
                      dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian ``(window_size,)`` centred on the middle tap (odd sizes only)."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"SSIM window size must be a positive odd number, got {window_size}")
    if sigma <= 0:
        raise ValueError(f"SSIM sigma must be positive, got {sigma}")
    x = torch.arange(window_size, dtype=torch.float64) - (window_size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``x`` ``(N, C, B, A)`` with zero padding ('same' size)."""
    c = x.shape[1]
    r = g.numel() // 2
    kb = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    ka = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    x = F.conv2d(x, kb, padding=(r, 0), groups=c)
    return F.conv2d(x, ka, padding=(0, r), groups=c)


def _check(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ShapeError(f"SSIM expects images (N, C, B, A), got shape {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ShapeError(f"SSIM expects two images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if mask is not None:
        n, c, b, a = x.shape
        if mask.dim() != 4 or mask.shape[0] != n or mask.shape[2:] != (b, a) or mask.shape[1] not in (1, c):
            raise ShapeError(f"SSIM expects a mask (N, 1, B, A) = {(n, 1, b, a)}, got {tuple(mask.shape)}")


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    window_size: int = WINDOW_SIZE,
    sigma: float = SIGMA,
    data_range: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSIM map and the weight of each of its pixels in the mean.

    Args:
        x, y: images ``(N, C, B, A)`` (prediction and target; SSIM is symmetric).
        mask: ``(N, 1, B, A)`` (or ``(N, C, B, A)``), nonzero on valid pixels; ``None``: all valid.
        window_size, sigma: the Gaussian window (11, 1.5).
        data_range: dynamic range of the images (1 for images in ``[0, 1]``).

    Returns:
        ``(smap, weight)``, both ``(N, C, B, A)`` float32: ``weight`` is 1 on the pixels that count
        (see the module docstring) and 0 elsewhere; ``smap`` is finite everywhere.
    """
    _check(x, y, mask)
    x = x.float()
    y = y.float()
    n, c, b, a = x.shape
    g = gaussian_kernel1d(window_size, sigma, device=x.device)
    m = torch.ones_like(x) if mask is None else (mask > 0).float().expand(n, c, b, a)

    # full windows: the window (zero padding outside the image) lies entirely on valid pixels
    r = window_size // 2
    box = F.avg_pool2d(F.pad(m, (r, r, r, r)), window_size, stride=1)  # fraction of valid pixels
    full = (box > 1.0 - 0.5 / window_size**2).float() * m
    has_full = full.flatten(1).sum(1) > 0  # (N,)
    weight = torch.where(has_full.view(n, 1, 1, 1), full, m)

    # local statistics by normalised convolution: exact plain Gaussian statistics on full windows
    norm = _blur(m, g).clamp_min(1e-6)
    valid = m > 0
    x = torch.where(valid, x, 0.0)  # padding may hold anything, even non-finite values
    y = torch.where(valid, y, 0.0)
    mu_x = _blur(x, g) / norm
    mu_y = _blur(y, g) / norm
    sxx = (_blur(x * x, g) / norm - mu_x**2).clamp_min(0.0)
    syy = (_blur(y * y, g) / norm - mu_y**2).clamp_min(0.0)
    sxy = _blur(x * y, g) / norm - mu_x * mu_y
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return smap, weight


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    window_size: int = WINDOW_SIZE,
    sigma: float = SIGMA,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Per-sample SSIM ``(N,)`` of images ``(N, C, B, A)`` over valid pixels (see :func:`ssim_map`).

    A sample without any valid pixel gets NaN (callers average over the others).
    """
    smap, weight = ssim_map(x, y, mask, window_size=window_size, sigma=sigma, data_range=data_range)
    total = weight.flatten(1).sum(1)
    value = (smap * weight).flatten(1).sum(1) / total.clamp_min(1.0)
    return torch.where(total > 0, value, torch.full_like(value, math.nan))


class SSIMLoss(nn.Module):
    """``1 - SSIM``, averaged over the samples that have valid pixels.

    ``forward(pred (N, C, B, A) in [0, 1], target (N, C, B, A), mask (N, 1, B, A) | None) -> scalar``.
    A batch without any valid pixel gives 0 (still connected to ``pred`` for autograd).
    """

    def __init__(self, window_size: int = WINDOW_SIZE, sigma: float = SIGMA, data_range: float = 1.0) -> None:
        super().__init__()
        gaussian_kernel1d(window_size, sigma)  # validate early
        self.window_size = int(window_size)
        self.sigma = float(sigma)
        self.data_range = float(data_range)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = ssim(pred, target, mask, window_size=self.window_size, sigma=self.sigma, data_range=self.data_range)
        ok = ~torch.isnan(s)
        if not bool(ok.any()):
            return pred.float().sum() * 0.0
        return 1.0 - s[ok].mean()

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, sigma={self.sigma}, data_range={self.data_range}"


@LOSSES.register("ssim")
def ssim_loss(num_outputs: int, params: object) -> SSIMLoss:
    """``1 - SSIM`` (reconstruction pretraining; the loss weights of the plan do not apply)."""
    return SSIMLoss()
