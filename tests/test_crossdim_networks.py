"""The cross-dimensional networks (omnia, dsnet, dxnet): shapes, plans, the dxnet kernel-extrapolation
invariant, 2D encoder weights from a PATH, and the offline ImageNet error."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks import build_network, network_class
from fpnunet.networks.dxnet import inflate
from fpnunet.networks.encoder_weights import (
    adapt_input_channels,
    load_encoder_weights,
    read_encoder_state_dict,
    resolve_encoder_weights,
)
from fpnunet.networks.encoders2d import ResNetEncoder, make_encoder_2d

torch.set_num_threads(1)

CROSSDIM = ["omnia", "dsnet", "dxnet"]


def _planned(name: str, patch=(8, 16), depth=16, in_channels=1, num_classes=1):
    kwargs = network_class(name).plan_kwargs(patch, depth, (1.0, 1.0))
    return build_network(name, in_channels, num_classes, **kwargs), kwargs


def _randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is nearly the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _imagenet_like_state_dict(levels: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """A 3-channel resnet18 state dict with timm's names, classifier keys included (as timm saves it)."""
    torch.manual_seed(seed)
    enc = ResNetEncoder((2, 2, 2, 2), in_chans=3, levels=levels)
    _randomise_bn(enc, seed)
    sd = dict(enc.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.zeros(1000)
    return sd


@pytest.mark.parametrize("name", CROSSDIM)
def test_shapes_gradients_and_plan_round_trip(name):
    torch.manual_seed(0)
    net, kwargs = _planned(name, num_classes=3, in_channels=2)
    assert json.loads(json.dumps(kwargs)) == kwargs == net.config
    (d_b, d_d, d_a), min_depth = type(net).input_divisors(**kwargs)
    assert 8 % d_b == 0 and 16 % d_a == 0 and 16 % d_d == 0 and 16 >= min_depth
    y = net(torch.randn(2, 2, 8, 16, 16))
    assert y.shape == (2, 3, 8, 16)
    F.binary_cross_entropy_with_logits(y, torch.rand_like(y)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ShapeError, match="not divisible"):
        net(torch.randn(1, 2, 6, 16, 16))


def test_plan_kwargs_for_the_synthetic_plane():
    assert network_class("omnia").plan_kwargs((32, 128), 64) == {
        "encoder": "resnet18", "levels": 5, "slabs": 8, "decoder": [16, 32, 64, 128, 256], "enface_inputs": []}
    assert network_class("dsnet").plan_kwargs((32, 128), 64)["depth_halvings"] == 4
    dx = network_class("dxnet").plan_kwargs((32, 128), 64)
    assert (dx["levels"], dx["fpb_kernel"]) == (5, 2)
    assert network_class("dxnet").input_divisors(**dx) == ((32, 32, 32), 64)
    assert network_class("omnia").plan_kwargs((16, 64), 24)["slabs"] == 8
    assert network_class("omnia").plan_kwargs((16, 64), 20)["slabs"] == 5  # largest divisor of depth <= 8


def test_dxnet_extrapolation_invariant():
    """Rule: k x k -> k x k x k / k, stride s -> s on depth, depth padded by replication. Guarantee: on
    a depth-constant volume every level is depth-constant and equals the 2D encoder on that en-face
    image; a one-slice volume gives the 2D encoder's output too."""
    torch.manual_seed(0)
    enc2d = make_encoder_2d("resnet18", 2, levels=4)
    _randomise_bn(enc2d)
    enc2d.eval()
    enc3d = inflate(enc2d).eval()
    assert sum(p.numel() for p in enc3d.parameters()) > 2 * sum(p.numel() for p in enc2d.parameters())
    image = torch.randn(1, 2, 16, 32)  # (N, C, B, A)
    with torch.no_grad():
        ref = enc2d(image)
        for depth in (16, 1):
            feats = enc3d(image.unsqueeze(-1).expand(-1, -1, -1, -1, depth).contiguous())  # (N, C, B, A, D)
            assert len(feats) == len(ref) == 4
            for f3, f2 in zip(feats, ref, strict=True):
                assert f3.shape[:4] == f2.shape
                for d in range(f3.shape[-1]):
                    torch.testing.assert_close(f3[..., d], f2, rtol=1e-4, atol=1e-4)
        # and the inflation is not a per-slice 2D encoder: depth structure changes the output
        x = torch.randn(1, 2, 16, 32, 16)
        per_slice = enc2d(x[..., 3])[0]
        assert not torch.allclose(enc3d(x)[0][..., 1], per_slice, atol=1e-3)


def test_dxnet_loads_2d_weights_by_inflation(tmp_path):
    sd = _imagenet_like_state_dict(levels=3)
    path = tmp_path / "resnet18_2d.pth"
    torch.save(sd, path)
    net, kwargs = _planned("dxnet")
    assert kwargs["levels"] == 3
    report = load_encoder_weights(net, read_encoder_state_dict(path), str(path), verbose=False)
    assert not report.missing and not report.shape_mismatch and report.unexpected == 2  # fc.weight, fc.bias
    # the reference: the same file in a 2D encoder taking 1 channel (stem summed over RGB)
    enc2d = make_encoder_2d("resnet18", 1, levels=3)
    enc2d.load_state_dict({k: (adapt_input_channels(v, 1) if k == "conv1.weight" else v)
                           for k, v in sd.items() if not k.startswith("fc.")})
    torch.testing.assert_close(net.encoder.conv1.weight[..., 0] * 7, enc2d.conv1.weight)
    torch.testing.assert_close(net.encoder.layer2[0].bn1.running_var, sd["layer2.0.bn1.running_var"])
    image = torch.randn(1, 1, 8, 16)
    with torch.no_grad():
        f3 = net.encoder.eval()(image.unsqueeze(-1).expand(-1, -1, -1, -1, 8).contiguous())
        f2 = enc2d.eval()(image)
    for a, b in zip(f3, f2, strict=True):
        torch.testing.assert_close(a[..., 0], b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["omnia", "dsnet"])
def test_weights_from_a_path_load_by_name_and_adapt_the_stem(tmp_path, name):
    sd = _imagenet_like_state_dict(levels=3)
    path = tmp_path / "encoder.pth"
    torch.save(sd, path)
    torch.manual_seed(0)
    net, _ = _planned(name)
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    report = load_encoder_weights(net, read_encoder_state_dict(path), str(path), verbose=False)
    assert report.adapted == ["conv1.weight"] and not report.missing and not report.shape_mismatch
    in_chans = net.encoder.conv1.in_channels  # 8 slabs (omnia) or 16 stem features (dsnet)
    assert in_chans in (8, 16)
    expected = sd["conv1.weight"].repeat(1, -(-in_chans // 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    torch.testing.assert_close(net.encoder.conv1.weight, expected)
    for key in ("layer1.0.conv2.weight", "layer2.0.downsample.0.weight", "bn1.running_mean"):
        assert torch.equal(net.encoder.state_dict()[key], sd[key]), key
    # the decoder (and dsnet's 3D stem) are untouched
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())

    # an fpnunet checkpoint of an omnia run: its encoder.* tensors are taken
    torch.save({"network": {"name": name, "kwargs": net.config}, "state_dict": net.state_dict(), "epoch": 1},
               tmp_path / "ckpt.pth")
    again = read_encoder_state_dict(tmp_path / "ckpt.pth")
    assert again.keys() == net.encoder.state_dict().keys()
    assert torch.equal(again["conv1.weight"], net.encoder.conv1.weight)


def test_a_weights_file_is_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'ran')!r}, 'w').write('x')",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    with pytest.raises(FPNError, match="not a state dict of tensors"):
        read_encoder_state_dict(path)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(FPNError, match="no such file"):
        read_encoder_state_dict(tmp_path / "missing.pth")
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    net, _ = _planned("omnia")
    with pytest.raises(FPNError, match="no tensor matches"):
        load_encoder_weights(net, read_encoder_state_dict(tmp_path / "other.pth"), "other.pth")


def test_imagenet_without_internet_is_a_one_line_error(tmp_path, monkeypatch):
    for var in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cls = network_class("omnia")
    with pytest.raises(FPNError) as info:
        resolve_encoder_weights("imagenet", "omnia", cls, {"encoder": "resnet18", "levels": 3})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--encoder-weights imagenet: ")
    assert "--encoder-weights resnet18.pth" in message  # says how to pass a PATH instead
    # the tag alone (a resumed run) needs no weights
    assert resolve_encoder_weights("imagenet", "omnia", cls, {}, fetch=False)[:2] == ("enc-imagenet", None)
    with pytest.raises(FPNError, match="has no 2D encoder"):
        resolve_encoder_weights("imagenet", "fpn", network_class("fpn"), {})


def test_timm_encoders_or_a_clear_error():
    """With timm importable: the built-in resnet18 is timm's (names, shapes, outputs). Without: a timm
    encoder name is a one-line error saying how to install it."""
    try:
        import timm
    except Exception:  # torchvision missing or built for another torch
        with pytest.raises(FPNError) as info:
            make_encoder_2d("efficientnet_b0", 3, 3)
        assert "\n" not in str(info.value) and "fpnunet[timm]" in str(info.value)
        return
    torch.manual_seed(0)
    ours = make_encoder_2d("resnet18", 3, 5).eval()
    theirs = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
    sd = theirs.state_dict()
    assert sd.keys() == ours.state_dict().keys()
    ours.load_state_dict(sd)
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(a, b)
    net = build_network("omnia", 1, 1, encoder="efficientnet_b0", levels=3, slabs=4)
    y = net(torch.randn(2, 1, 32, 8, 32))
    assert y.shape == (2, 1, 32, 32)
    y.mean().backward()
    assert net.encoder.conv_stem.weight.grad is not None and net.encoder.conv_stem.in_channels == 4
    with pytest.raises(FPNError, match="cannot extrapolate layer"):
        build_network("dxnet", 1, 1, encoder="efficientnet_b0", levels=3)
