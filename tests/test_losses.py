"""Segmentation losses on hand-made inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fpnunet.errors import ShapeError
from fpnunet.training.losses import SegmentationLoss, logits_from_probabilities, soft_dice_loss


def _target() -> torch.Tensor:
    t = torch.zeros(2, 1, 4, 6, dtype=torch.long)
    t[0, 0, 1:3, 2:5] = 1
    t[1, 0, 0, 0:2] = 1
    return t


def test_binary_perfect_prediction_is_near_zero():
    target = _target()
    logits = (target.float() * 2 - 1) * 30.0
    assert float(SegmentationLoss(1)(logits, target)) < 1e-6


def test_binary_wrong_prediction_is_large_and_value_matches_formula():
    target = _target()
    logits = torch.zeros(2, 1, 4, 6)  # p = 0.5 everywhere
    loss = float(SegmentationLoss(1)(logits, target))
    n_fg, n = float(target.sum()), target.numel()
    dice = (2 * 0.5 * n_fg + 1e-5) / (0.5 * n + n_fg + 1e-5)
    expected = ((1 - dice) + math.log(2)) / 2
    assert loss == pytest.approx(expected, rel=1e-5)


def test_mask_excludes_padding():
    target = _target()
    logits = (target.float() * 2 - 1) * 30.0
    mask = torch.ones(2, 1, 4, 6)
    mask[:, :, :, 5] = 0  # the last column is padding ...
    logits[:, :, :, 5] = 30.0  # ... where the prediction is wrong
    target_pad = target.clone()
    target_pad[:, :, :, 5] = 0
    loss_fn = SegmentationLoss(1)
    assert float(loss_fn(logits, target_pad, mask)) < 1e-6
    assert float(loss_fn(logits, target_pad, None)) > 0.1
    # padding values never matter, whatever they are
    target_pad[:, :, :, 5] = 1
    assert float(loss_fn(logits, target_pad, mask)) < 1e-6


def test_empty_patch_with_empty_prediction_is_zero():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    assert float(SegmentationLoss(1)(torch.full((1, 1, 4, 4), -30.0), target)) < 1e-6


def test_multiclass_perfect_and_value():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2, :2] = 1
    target[0, 0, 2:, 2:] = 2
    onehot = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    loss_fn = SegmentationLoss(3)
    assert float(loss_fn(onehot * 40.0, target)) < 1e-6
    # uniform logits: CE = log 3, Dice per fg class = 2 * (4/3) / (16/3 + 4)
    loss = float(loss_fn(torch.zeros(1, 3, 4, 4), target))
    dice = (2 * 4 / 3 + 1e-5) / (16 / 3 + 4 + 1e-5)
    assert loss == pytest.approx((1 - dice) + math.log(3), rel=1e-5)


def test_multiclass_dice_ignores_background():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 0, 0] = 1
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, 0] = 1.0  # all background: background Dice is near 1, foreground Dice 0
    onehot = F.one_hot(target[:, 0], 2).permute(0, 3, 1, 2).float()
    assert float(soft_dice_loss(probs[:, 1:], onehot[:, 1:])) == pytest.approx(1.0, abs=1e-4)


def test_gradients_flow_and_bf16_logits_accepted():
    target = _target()
    logits = torch.zeros(2, 1, 4, 6, requires_grad=True)
    SegmentationLoss(1)(logits.to(torch.bfloat16), target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_logits_from_probabilities_round_trip():
    p = torch.tensor([0.1, 0.5, 0.9]).reshape(1, 1, 1, 3)
    assert torch.allclose(torch.sigmoid(logits_from_probabilities(p)), p, atol=1e-6)
    q = torch.softmax(torch.randn(1, 3, 2, 2), dim=1)
    assert torch.allclose(torch.softmax(logits_from_probabilities(q), dim=1), q, atol=1e-6)


def test_shape_errors_are_clear():
    with pytest.raises(ShapeError, match="target"):
        SegmentationLoss(1)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ShapeError, match="3 output channels"):
        SegmentationLoss(3)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
