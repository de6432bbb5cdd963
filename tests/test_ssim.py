"""SSIM and its loss: reference agreement, masking, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fpnunet.errors import ShapeError
from fpnunet.training.ssim import SSIMLoss, gaussian_kernel1d, ssim, ssim_map

torch.set_num_threads(1)


def reference_ssim(x: np.ndarray, y: np.ndarray, win: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> float:
    """Straightforward SSIM (Wang et al. 2004): for every pixel whose 11 x 11 window fits in the image,
    Gaussian-weighted means, population variances and covariance, then the mean of the map."""
    r = win // 2
    t = np.arange(win) - r
    g1 = np.exp(-(t**2) / (2 * sigma**2))
    w = np.outer(g1, g1)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            px = x[i - r:i + r + 1, j - r:j + r + 1].astype(np.float64)
            py = y[i - r:i + r + 1, j - r:j + r + 1].astype(np.float64)
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def _pair(shape=(20, 28), seed=0, noise=0.15):
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32)
    y = np.clip(0.8 * x + 0.1 + noise * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return x, y


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)[None, None]


def test_identical_images_give_one_and_zero_loss():
    x, _ = _pair()
    assert ssim(_t(x), _t(x)).item() == pytest.approx(1.0, abs=1e-5)
    assert SSIMLoss()(_t(x), _t(x)).item() == pytest.approx(0.0, abs=1e-5)
    mask = torch.zeros(1, 1, *x.shape)
    mask[..., 2:15, 3:20] = 1
    assert ssim(_t(x), _t(x), mask).item() == pytest.approx(1.0, abs=1e-5)


def test_matches_reference_implementation():
    x, y = _pair()
    ours = ssim(_t(x), _t(y)).item()
    assert ours == pytest.approx(reference_ssim(x, y), abs=1e-5)
    assert ours < 0.95  # a real difference, not a degenerate case


def test_matches_skimage_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair((24, 40), seed=3)
    ref = metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0)
    assert ssim(_t(x), _t(y)).item() == pytest.approx(ref, abs=1e-5)


def test_full_mask_equals_no_mask_and_batch_is_per_sample():
    x1, y1 = _pair(seed=1)
    x2, y2 = _pair(seed=2, noise=0.4)
    x = torch.stack([_t(x1)[0], _t(x2)[0]])
    y = torch.stack([_t(y1)[0], _t(y2)[0]])
    per = ssim(x, y, torch.ones(2, 1, *x1.shape))
    assert per.shape == (2,)
    assert per[0].item() == pytest.approx(reference_ssim(x1, y1), abs=1e-5)
    assert per[1].item() == pytest.approx(reference_ssim(x2, y2), abs=1e-5)
    assert torch.allclose(per, ssim(x, y), atol=1e-6)
    assert SSIMLoss()(x, y).item() == pytest.approx(1 - per.mean().item(), abs=1e-6)


def test_masked_region_equals_crop_of_the_valid_region():
    """A valid sub-rectangle gives the SSIM of that crop alone, whatever lies outside it."""
    x, y = _pair((24, 32), seed=4)
    mask = torch.zeros(1, 1, 24, 32)
    mask[..., 3:19, 5:27] = 1
    crop = ssim(_t(x[3:19, 5:27].copy()), _t(y[3:19, 5:27].copy())).item()
    assert ssim(_t(x), _t(y), mask).item() == pytest.approx(crop, abs=1e-5)


def test_masked_pixels_do_not_influence_loss_nor_get_gradient():
    x, y = _pair((24, 32), seed=5)
    mask = torch.zeros(1, 1, 24, 32)
    mask[..., :16, :20] = 1
    pred = _t(x).clone().requires_grad_(True)
    loss = SSIMLoss()(pred, _t(y), mask)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[mask == 0].abs().max().item() == 0.0
    assert pred.grad[mask == 1].abs().max().item() > 0.0
    # garbage in the padding, of the prediction and of the target, changes nothing
    rng = np.random.default_rng(9)
    x2 = x.copy()
    y2 = y.copy()
    x2[16:, :] = rng.random((8, 32)) * 100
    y2[:, 20:] = -50.0
    y2[20:, 25:] = np.nan
    assert SSIMLoss()(_t(x2), _t(y2), mask).item() == pytest.approx(loss.item(), abs=1e-6)


def test_small_valid_region_falls_back_to_masked_mean():
    """A valid region narrower than the window still gives a finite, mask-restricted SSIM."""
    x, y = _pair((16, 16), seed=6)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 2:14] = 1  # 6 rows: no full 11 x 11 window
    smap, weight = ssim_map(_t(x), _t(y), mask)
    assert torch.equal(weight, mask)
    value = ssim(_t(x), _t(y), mask).item()
    assert np.isfinite(value) and -1.0 <= value <= 1.0
    assert ssim(_t(x), _t(x), mask).item() == pytest.approx(1.0, abs=1e-5)
    y2 = y.copy()
    y2[:4] = 7.0
    assert ssim(_t(x), _t(y2), mask).item() == pytest.approx(value, abs=1e-6)


def test_gradients_finite_on_constant_and_bf16_inputs():
    pred = torch.full((2, 1, 16, 16), 0.5, requires_grad=True)
    target = torch.zeros(2, 1, 16, 16)
    loss = SSIMLoss()(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    logits = torch.randn(2, 1, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    loss = SSIMLoss()(torch.sigmoid(logits), torch.rand(2, 1, 16, 16))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(logits.grad.float()).all()


def test_empty_mask_gives_zero_loss_and_nan_ssim():
    x, y = _pair((16, 16))
    mask = torch.zeros(1, 1, 16, 16)
    assert torch.isnan(ssim(_t(x), _t(y), mask)).all()
    pred = _t(x).clone().requires_grad_(True)
    loss = SSIMLoss()(pred, _t(y), mask)
    loss.backward()
    assert loss.item() == 0.0 and pred.grad.abs().max().item() == 0.0


def test_kernel_and_shape_errors():
    g = gaussian_kernel1d()
    assert g.shape == (11,) and g.sum().item() == pytest.approx(1.0) and g.argmax().item() == 5
    with pytest.raises(ValueError):
        gaussian_kernel1d(10)
    with pytest.raises(ShapeError):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ShapeError):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ShapeError):
        ssim(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.ones(1, 1, 8, 8))
