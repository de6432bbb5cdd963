"""Sliding-window prediction over the en-face plane at full depth, with batched flip TTA.

A preprocessed volume ``(C, B, D, A)`` is cut into en-face windows ``(C, pB, D, pA)`` (the
depth is never tiled: the network collapses it). Each window goes through every network once,
its four flips on the en-face axes (none, B, A, both) concatenated along N into a single
forward ``(4 * n, C, pB, D, pA)``. Every forward's logits ``(N, K, pB, pA)`` become
probabilities (sigmoid for ``K == 1``, softmax over K otherwise), are flipped back, averaged
over the flips and over the networks (folds), and accumulated into the plane with Gaussian
weights (the centre of a window is trusted more than its border)::

    probs = predict_sliding_window([net], volume, (32, 256), num_outputs=1)  # (K, B, A)

A plane smaller than the patch is zero-padded to the patch (the preprocessed volume is
z-scored, so zero is its mean intensity) and the result cropped back; ``whole_plane=True``
feeds the whole plane in one window, padded only up to the network's input divisors. A
:class:`~fpnunet.inference.windows.WindowPlan` (what the :class:`~fpnunet.inference.Predictor`
passes) gives larger windows fitted to the memory at hand, blended only where they overlap.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks.layout import channels_last_input

from .windows import WindowPlan, overlap_weights, window_starts

__all__ = ["gaussian_weights", "network_divisors", "predict_sliding_window"]

_MIN_WEIGHT = 1e-4


def gaussian_weights(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """Importance map of an en-face window: a separable Gaussian ``(pB, pA)``, maximum 1.

    ``sigma = patch * sigma_scale`` per axis, centred on the window's middle (symmetric under
    flips). Values are clamped to at least ``1e-4`` so that border pixels covered by one window
    only still get a finite, well-conditioned weight.
    """
    axes = []
    for p in patch_size:
        p = int(p)
        if p < 1:
            raise ValueError(f"patch size must be positive, got {tuple(patch_size)}")
        sigma = max(p * sigma_scale, 1e-6)
        i = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        axes.append(torch.exp(-(i**2) / (2.0 * sigma**2)))
    w = axes[0][:, None] * axes[1][None, :]
    w = w / w.max()
    return w.clamp_min(_MIN_WEIGHT).to(torch.float32)


def network_divisors(network: nn.Module) -> tuple[int, int]:
    """``(dB, dA)`` the en-face input of ``network`` must be divisible by (``(1, 1)`` if unknown).

    Uses :meth:`fpnunet.networks.SegNetwork.input_divisors` with the network's ``config``.
    """
    fn = getattr(type(network), "input_divisors", None)
    if fn is None:
        return 1, 1
    (db, _, da), _ = fn(**getattr(network, "config", {}))
    return int(db), int(da)


def _pad_to(volume: torch.Tensor, target: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``(C, B, D, A)`` to en-face size ``target``, evenly on both sides.

    Returns the padded volume and the ``(b0, a0)`` offset of the original plane in it.
    """
    _, b, _, a = volume.shape
    pb, pa = max(target[0] - b, 0), max(target[1] - a, 0)
    if pb == 0 and pa == 0:
        return volume, (0, 0)
    b0, a0 = pb // 2, pa // 2
    # F.pad pads the last dims first: (A_before, A_after, D_before, D_after, B_before, B_after)
    padded = torch.nn.functional.pad(volume, (a0, pa - a0, 0, 0, b0, pb - b0))
    return padded, (b0, a0)


def _unflip_mean(p: torch.Tensor) -> torch.Tensor:
    """``(4n, K, B, A)`` predictions of the flips (none, B, A, both; each ``n``) -> ``(n, K, B, A)`` mean,
    flipped back."""
    p0, pb, pa, pba = p.chunk(4, dim=0)
    return (p0 + pb.flip(2) + pa.flip(3) + pba.flip(2, 3)) / 4.0


def _unflip_members(p: torch.Tensor) -> torch.Tensor:
    """``(4n, K, B, A)`` predictions of the flips -> ``(n, 4, K, B, A)``, each flipped back (one member per flip)."""
    p0, pb, pa, pba = p.chunk(4, dim=0)
    return torch.stack([p0, pb.flip(2), pa.flip(3), pba.flip(2, 3)], dim=1)


def _to_probabilities(logits: torch.Tensor, num_outputs: int) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if num_outputs == 1 else torch.softmax(logits, dim=1)


def _forward_probs(networks: Sequence[nn.Module], x: torch.Tensor, num_outputs: int, tta: bool,
                   flips_per_forward: int, autocast, channels_last: bool,  # noqa: ANN001
                   members: bool = False) -> torch.Tensor:
    """Mean probabilities ``(n, K, pB, pA)`` of windows ``x`` ``(n, C, pB, D, pA)`` over the networks
    and (with ``tta``) the four flips, ``flips_per_forward`` of them per forward; with ``members``
    every network's every flip kept apart instead, ``(n, F * T, K, pB, pA)`` (network-major)."""
    if tta:
        variants = [x, x.flip(2), x.flip(4), x.flip(2, 4)]
        groups = [torch.cat(variants[i:i + flips_per_forward], 0) for i in range(0, 4, flips_per_forward)]
    else:
        groups = [x]
    probs = None
    kept: list[torch.Tensor] = []
    for net in networks:
        parts = []
        for xg in groups:
            if channels_last:
                xg = channels_last_input(xg)
            with autocast:
                logits = net(xg)
            expected = (xg.shape[0], num_outputs, xg.shape[2], xg.shape[4])
            if tuple(logits.shape) != expected:
                raise ShapeError(
                    f"{type(net).__name__} returned logits of shape {tuple(logits.shape)} for input "
                    f"{tuple(xg.shape)}; expected (N, K, pB, pA) = {expected}"
                )
            parts.append(_to_probabilities(logits, num_outputs))
        p = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        if members:
            kept.append(_unflip_members(p) if tta else p.unsqueeze(1))
            continue
        if tta:
            p = _unflip_mean(p)
        probs = p if probs is None else probs + p
    if members:
        return torch.cat(kept, dim=1)
    return probs / len(networks)


@torch.inference_mode()
def predict_sliding_window(
    networks: Sequence[nn.Module],
    volume: torch.Tensor,
    patch_size: Sequence[int],
    *,
    num_outputs: int,
    tta: bool = True,
    step_fraction: float = 0.5,
    batch_windows: int = 1,
    use_gaussian: bool = True,
    precision: str = "fp32",
    whole_plane: bool = False,
    channels_last: bool = False,
    divisors: tuple[int, int] | None = None,
    window_plan: WindowPlan | None = None,
    members: bool = False,
) -> torch.Tensor:
    """Probabilities ``(K, B, A)`` float32 of a preprocessed volume ``(C, B, D, A)``.

    Args:
        networks: one or more networks (folds) mapping ``(N, C, pB, D, pA)`` to logits
            ``(N, K, pB, pA)``; in eval mode, on ``volume.device``. Their probabilities are averaged.
        volume: the preprocessed volume ``(C, B, D, A)`` (float, on the networks' device).
        patch_size: the en-face window ``(pB, pA)`` (the plan's ``patch_size``).
        num_outputs: K; 1 means sigmoid, more means softmax over K.
        tta: average over the four en-face flips (none, B, A, both), batched in one forward.
        step_fraction: window step as a fraction of the patch (0.5: half-overlapping windows).
        batch_windows: windows per forward (each carries its 4 flips with ``tta``).
        use_gaussian: weight each window by :func:`gaussian_weights` (else uniformly).
        precision: ``bf16`` runs the networks under bf16 autocast on ``volume.device``'s type.
        whole_plane: one window over the whole plane, zero-padded up to ``divisors``
            (default: the first network's :func:`network_divisors`) instead of sliding.
        channels_last: feed inputs in channels-last (:func:`fpnunet.networks.layout.channels_last_input`).
        divisors: ``(dB, dA)`` for ``whole_plane``.
        window_plan: a :class:`~fpnunet.inference.windows.WindowPlan` for this plane (wins over
            ``patch_size``/``whole_plane``/``step_fraction``): its windows, blended with
            :func:`~fpnunet.inference.windows.overlap_weights` (Gaussian weights for ``patch``),
            one window and ``flips_per_forward`` flips per forward.
        members: keep the ensemble's members apart: every network's every flip, blended over the
            windows like the mean (whose average they are); for the per-case uncertainty
            (:mod:`fpnunet.inference.ensemble_scores`).

    Returns:
        ``(K, B, A)`` float32 probabilities on ``volume.device``; with ``members``
        ``(F, T, K, B, A)``: F networks x T flips (4 with ``tta``, else 1).
    """
    if not networks:
        raise FPNError("predict_sliding_window needs at least one network")
    if volume.ndim != 4:
        raise ShapeError(f"expected a preprocessed volume (C, B, D, A), got shape {tuple(volume.shape)}")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    _, b, _, a = volume.shape
    volume = volume.float()
    flips_per_forward = 4
    if window_plan is not None:
        patch = window_plan.window
        target = window_plan.padded
        flips_per_forward = window_plan.flips_per_forward
        if window_plan.mode != "patch":
            batch_windows = 1
    elif whole_plane:
        db, da = divisors or network_divisors(networks[0])
        patch = (math.ceil(b / db) * db, math.ceil(a / da) * da)
        target = patch
    else:
        patch = (int(patch_size[0]), int(patch_size[1]))
        target = (max(b, patch[0]), max(a, patch[1]))
    padded, (b0, a0) = _pad_to(volume, target)
    _, bp, _, ap = padded.shape
    device = padded.device

    if window_plan is not None:
        windows = [(sb, sa) for sb in window_plan.starts_b for sa in window_plan.starts_a]
        if window_plan.mode == "patch":
            weight = gaussian_weights(patch).to(device) if use_gaussian else torch.ones(patch, device=device)
            weights = dict.fromkeys(windows, weight)
        else:
            weights = {k: w.to(device) for k, w in
                       overlap_weights(window_plan.starts_b, window_plan.starts_a, patch).items()}
    else:
        windows = [(sb, sa) for sb in window_starts(bp, patch[0], step_fraction)
                   for sa in window_starts(ap, patch[1], step_fraction)]
        weight = gaussian_weights(patch).to(device) if use_gaussian else torch.ones(patch, device=device)
        weights = dict.fromkeys(windows, weight)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    if len(windows) == 1 and windows[0] == (0, 0) and patch == (bp, ap):
        # one window over the plane: no blending at all
        x = padded.unsqueeze(0)
        probs = _forward_probs(networks, x, num_outputs, tta, flips_per_forward, autocast, channels_last,
                               members)[0]
        return _shape_members(probs[..., b0 : b0 + b, a0 : a0 + a], len(networks), members)

    lead = (len(networks) * (4 if tta else 1),) if members else ()
    acc = torch.zeros((*lead, num_outputs, bp, ap), dtype=torch.float32, device=device)
    norm = torch.zeros((bp, ap), dtype=torch.float32, device=device)
    for i in range(0, len(windows), batch_windows):
        chunk = windows[i : i + batch_windows]
        x = torch.stack([padded[:, sb : sb + patch[0], :, sa : sa + patch[1]] for sb, sa in chunk])
        probs = _forward_probs(networks, x, num_outputs, tta, flips_per_forward, autocast, channels_last, members)
        for (sb, sa), p in zip(chunk, probs):
            w = weights[(sb, sa)]
            acc[..., sb : sb + patch[0], sa : sa + patch[1]] += p * w
            norm[sb : sb + patch[0], sa : sa + patch[1]] += w

    out = acc / norm
    return _shape_members(out[..., b0 : b0 + b, a0 : a0 + a], len(networks), members)


def _shape_members(probs: torch.Tensor, networks: int, members: bool) -> torch.Tensor:
    """``(K, B, A)`` as is; members ``(F * T, K, B, A)`` -> ``(F, T, K, B, A)``."""
    if not members:
        return probs.contiguous()
    return probs.reshape(networks, probs.shape[0] // networks, *probs.shape[1:]).contiguous()
