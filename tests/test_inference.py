"""Inference engine: sliding window, Gaussian weighting, flip TTA, fold ensemble, export."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from inference_nets import DEPTH, ColumnNet, ConstNet, DivisorCheckNet, SkewNet, _column_truth, _seeded

from fpnunet.inference.export import lesion_areas, probabilities_to_segmentation, write_probabilities
from fpnunet.inference.sliding_window import gaussian_weights, predict_sliding_window
from fpnunet.inference.windows import window_starts


# ----------------------------------------------------------------------------- sliding window
def test_window_starts_cover_and_overlap():
    assert window_starts(8, 8) == [0]
    assert window_starts(5, 8) == [0]
    assert window_starts(512, 256) == [0, 128, 256]
    for size, patch in [(49, 32), (70, 32), (100, 7), (33, 32)]:
        starts = window_starts(size, patch, 0.5)
        assert starts[0] == 0 and starts[-1] + patch == size
        assert all(0 < b - a <= patch // 2 + 1 for a, b in zip(starts, starts[1:]))


def test_gaussian_weights_shape_peak_and_symmetry():
    w = gaussian_weights((8, 32))
    assert w.shape == (8, 32) and w.dtype == torch.float32
    assert math.isclose(float(w.max()), 1.0, rel_tol=1e-6) and float(w.min()) > 0
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))
    assert float(w[4, 16]) > float(w[0, 16]) and float(w[4, 16]) > float(w[4, 0])


@pytest.mark.parametrize("use_gaussian", [True, False])
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_sliding_window_equals_one_pass(use_gaussian, num_outputs):
    net = _seeded(ColumnNet, in_channels=2, num_classes=num_outputs)
    torch.manual_seed(1)
    volume = torch.randn(2, 21, DEPTH, 70)
    kw = dict(num_outputs=num_outputs, tta=False, use_gaussian=use_gaussian)
    sliding = predict_sliding_window([net], volume, (8, 32), **kw)
    one_pass = predict_sliding_window([net], volume, (21, 70), **kw)
    whole = predict_sliding_window([net], volume, (8, 32), whole_plane=True, **kw)
    batched = predict_sliding_window([net], volume, (8, 32), batch_windows=5, **kw)
    truth = _column_truth(net, volume, num_outputs)
    assert sliding.shape == (num_outputs, 21, 70) and sliding.dtype == torch.float32
    for out in (sliding, whole, batched):
        torch.testing.assert_close(out, one_pass, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one_pass, truth, rtol=1e-5, atol=1e-6)
    if num_outputs > 1:
        torch.testing.assert_close(sliding.sum(0), torch.ones(21, 70))


def test_plane_smaller_than_patch_is_padded_and_cropped():
    net = _seeded(ColumnNet, in_channels=1, num_classes=1)
    volume = torch.randn(1, 5, DEPTH, 20)
    out = predict_sliding_window([net], volume, (8, 32), num_outputs=1, tta=True)
    assert out.shape == (1, 5, 20)
    torch.testing.assert_close(out, _column_truth(net, volume, 1), rtol=1e-5, atol=1e-6)
    # one axis smaller than the patch, the other larger
    volume = torch.randn(1, 5, DEPTH, 75)
    out = predict_sliding_window([net], volume, (8, 32), num_outputs=1, tta=False)
    torch.testing.assert_close(out, _column_truth(net, volume, 1), rtol=1e-5, atol=1e-6)


def test_whole_plane_pads_to_network_divisors():
    net = _seeded(DivisorCheckNet, in_channels=1, num_classes=1)
    volume = torch.randn(1, 10, DEPTH, 37)
    out = predict_sliding_window([net], volume, (4, 16), num_outputs=1, tta=True, whole_plane=True)
    assert out.shape == (1, 10, 37)
    torch.testing.assert_close(out, _column_truth(net, volume, 1), rtol=1e-5, atol=1e-6)


def test_gaussian_accumulation_of_overlapping_windows():
    net = SkewNet().eval()
    torch.manual_seed(2)
    volume = torch.randn(1, 8, 6, 48)  # windows start at A = 0 and A = 16
    out = predict_sliding_window([net], volume, (8, 32), num_outputs=1, tta=False)
    w = gaussian_weights((8, 32))
    with torch.no_grad():
        p0 = torch.sigmoid(net(volume[None, ..., 0:32]))[0]
        p1 = torch.sigmoid(net(volume[None, ..., 16:48]))[0]
    acc = torch.zeros(1, 8, 48)
    norm = torch.zeros(8, 48)
    acc[..., 0:32] += p0 * w
    acc[..., 16:48] += p1 * w
    norm[:, 0:32] += w
    norm[:, 16:48] += w
    torch.testing.assert_close(out, acc / norm, rtol=1e-5, atol=1e-6)


def test_tta_averages_the_four_flips():
    net = SkewNet(in_channels=1, num_classes=1).eval()
    torch.manual_seed(3)
    volume = torch.randn(1, 8, 6, 32)  # exactly one window

    def p(x):
        with torch.no_grad():
            return torch.sigmoid(net(x[None]))[0]

    manual = (p(volume) + p(volume.flip(1)).flip(1) + p(volume.flip(3)).flip(2)
              + p(volume.flip(1, 3)).flip(1, 2)) / 4
    out = predict_sliding_window([net], volume, (8, 32), num_outputs=1, tta=True)
    no_tta = predict_sliding_window([net], volume, (8, 32), num_outputs=1, tta=False)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(no_tta, p(volume), rtol=1e-5, atol=1e-6)
    assert float((out - no_tta).abs().max()) > 1e-3  # the net is not flip-invariant

    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    predict_sliding_window([net], torch.randn(1, 8, 6, 48), (8, 32), num_outputs=1, tta=True)
    assert calls == [4, 4]  # one batched forward (4 flips) per window


def test_ensemble_averages_fold_probabilities():
    a, b = ConstNet([2.0]), ConstNet([-1.0])
    volume = torch.randn(1, 9, 4, 40)
    out = predict_sliding_window([a, b], volume, (8, 32), num_outputs=1)
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(out, torch.full((1, 9, 40), float(expected)))
    a3, b3 = ConstNet([0.0, 1.0, 3.0]), ConstNet([2.0, 0.0, -1.0])
    out = predict_sliding_window([a3, b3], volume, (8, 32), num_outputs=3)
    expected = (torch.softmax(a3.values, 0) + torch.softmax(b3.values, 0)) / 2
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 9, 40))


# ----------------------------------------------------------------------------- export
def test_segmentation_labels_and_areas(tmp_path):
    probs = np.array([[[0.2, 0.7], [0.51, 0.5]]], dtype=np.float32)
    seg = probabilities_to_segmentation(probs, labels={"background": 0, "GA": 2})
    assert seg.dtype == np.uint8 and seg.tolist() == [[0, 2], [2, 0]]
    probs3 = np.stack([np.full((2, 2), 0.5), np.eye(2) * 0.9, np.fliplr(np.eye(2)) * 0.8]).astype(np.float32)
    seg3 = probabilities_to_segmentation(probs3, labels={"bg": 0, "GA": 1, "drusen": 3})
    assert seg3.tolist() == [[1, 3], [3, 1]]
    areas = lesion_areas(seg3, (0.12, 0.0113), {"bg": 0, "GA": 1, "drusen": 3, "cyst": 4})
    assert areas == pytest.approx({"GA": 2 * 0.12 * 0.0113, "drusen": 2 * 0.12 * 0.0113, "cyst": 0.0})
    write_probabilities(probs3, tmp_path / "c.npz", labels={"bg": 0, "GA": 1, "drusen": 3})
    with np.load(tmp_path / "c.npz") as z:
        np.testing.assert_array_equal(z["probabilities"], probs3)
        assert z["label_values"].tolist() == [0, 1, 3]
