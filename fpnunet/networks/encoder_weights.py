"""2D encoder weights for ``omnia``, ``dsnet`` and ``dxnet``: ``fpn_train --encoder-weights imagenet|none|PATH``.

* :func:`resolve_encoder_weights` turns the choice into ``(tag, state dict or None, message)``:
  ``none`` keeps the random init; ``imagenet`` asks timm for its ImageNet weights (internet, or a
  filled Hugging Face / timm cache; otherwise a one-line :class:`FPNError` says how to pass a
  PATH instead); ``PATH`` reads a local file without running code (``torch.load(weights_only=True)``
  or ``.safetensors``): a plain state dict of the 2D encoder (timm's names, classifier keys
  ignored), or an fpnunet checkpoint of an ``omnia``/``dsnet`` run, whose ``encoder.*`` tensors
  are taken (how a site without internet reuses its own en-face pretraining, docs/networks.md).
* :func:`load_encoder_weights` copies them into a built network's ``encoder``: by name; the first
  conv's input channels adapted when they differ (timm's rule: summed for one channel, else the
  RGB kernels repeated and scaled by ``3 / C``); for ``dxnet`` every 2D kernel inflated to 3D
  (:func:`fpnunet.networks.dxnet.inflate_kernel`).

The weights then live in the model's state dict, so checkpoints and prediction never need the
PATH or the internet again.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpnunet.checkpoint import load_file as load_torch_file
from fpnunet.errors import FPNError
from fpnunet.networks.dxnet import inflate_kernel
from fpnunet.networks.encoders2d import BUILTIN_RESNETS, import_timm

CHOICES_HELP = "imagenet, none, or a PATH to a state dict of the 2D encoder (or an omnia/dsnet checkpoint)"


@dataclass
class EncoderLoadReport:
    """What :func:`load_encoder_weights` did with the encoder's state-dict tensors."""

    source: str
    total: int
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    """Loaded after adapting input channels and/or inflating to 3D."""
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"encoder weights {self.source}: loaded {len(self.loaded)} of {self.total} encoder tensors"]
        if self.adapted:
            parts.append(f"{len(self.adapted)} adapted (input channels / inflated to 3D)")
        if self.missing or self.shape_mismatch:
            parts.append(f"{len(self.missing)} missing and {len(self.shape_mismatch)} of another shape kept random "
                         f"(e.g. {(self.missing + self.shape_mismatch)[0]})")
        if self.unexpected:
            parts.append(f"{self.unexpected} tensors of the file unused")
        return "; ".join(parts)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Terminal colour codes (torch's messages carry some), never passed on in a one-line error."""


# ----------------------------------------------------------------------------- sources
def read_encoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The 2D encoder tensors of a local file (never unpickles code). See the module docstring."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FPNError(f"--encoder-weights {path}: no such file (expected {CHOICES_HELP})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = load_torch_file(path, "cpu", what="state dict")  # weights_only; a pickle is refused, not advised
    except ImportError:
        raise FPNError(f"--encoder-weights {path}: reading .safetensors needs the safetensors package "
                       "(pip install safetensors)") from None
    except FPNError as exc:
        raise FPNError(f"--encoder-weights {_ANSI.sub('', str(exc))}") from None
    except Exception as exc:  # noqa: BLE001  an unreadable .safetensors file
        first = _ANSI.sub("", (str(exc).strip().splitlines() or [""])[0])
        raise FPNError(f"--encoder-weights {path}: not a state dict of tensors ({type(exc).__name__}: "
                       f"{first})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FPNError(f"--encoder-weights {path}: not a state dict of tensors")
    sd = {str(k).removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}
    if any(k.startswith("encoder.") for k in sd):  # an fpnunet omnia/dsnet/dxnet checkpoint
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    return sd


def imagenet_state_dict(encoder: str, levels: int) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights of ``encoder`` under our encoder's names; a one-line
    :class:`FPNError` when timm is missing or the weights cannot be downloaded nor found in the cache."""
    how = (f"download them where there is internet, e.g. python -c \"import timm, torch; "
           f"torch.save(timm.create_model('{encoder}', pretrained=True).state_dict(), '{encoder}.pth')\", "
           f"and pass --encoder-weights {encoder}.pth")
    try:
        timm = import_timm()
    except FPNError as exc:
        raise FPNError(f"--encoder-weights imagenet: timm's ImageNet weights need timm ({exc}); or {how}") from None
    try:
        if encoder in BUILTIN_RESNETS:  # the built-in ResNets carry timm's classifier names
            model = timm.create_model(encoder, pretrained=True)
        else:
            model = timm.create_model(encoder, pretrained=True, features_only=True, out_indices=tuple(range(levels)))
    except Exception as exc:  # offline: huggingface_hub / urllib / OSError flavours
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise FPNError(f"--encoder-weights imagenet: cannot get timm's ImageNet weights for {encoder!r} (no internet "
                       f"and no cached copy: {type(exc).__name__}: {first}); {how}") from None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def resolve_encoder_weights(choice: str, network: str, network_cls: type, kwargs: dict[str, Any],
                            fetch: bool = True) -> tuple[str | None, dict[str, torch.Tensor] | None, str]:
    """``(folder tag or None, state dict or None, message)`` for ``--encoder-weights``.

    ``fetch=False`` (a resumed run: the weights are in its checkpoint) resolves the tag only.
    """
    if choice == "none":
        return None, None, ""
    if getattr(network_cls, "encoder_input", None) is None:
        raise FPNError(f"--encoder-weights {choice}: network {network!r} has no 2D encoder "
                       "(only omnia, dsnet and dxnet have one); leave it at none")
    encoder = str(kwargs.get("encoder", "resnet18"))
    if choice == "imagenet":
        sd = imagenet_state_dict(encoder, int(kwargs.get("levels", 5))) if fetch else None
        return "enc-imagenet", sd, f"encoder {encoder}: timm's ImageNet weights"
    path = Path(choice).expanduser().absolute()
    sd = read_encoder_state_dict(path) if fetch else None
    run = path.parent.parent.name if path.parent.name.startswith("fold_") else path.parent.name
    match = re.fullmatch(r"pretrain__.+__([A-Za-z0-9]+)", run)
    tag = f"enc-ssl-{match.group(1)}" if match else "enc-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", path.stem)[:40] or "file")
    return tag, sd, f"encoder {encoder}: weights from {path}"


# ----------------------------------------------------------------------------- loading
def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv kernel ``(O, I, ...)`` for ``channels`` inputs: summed over ``I`` for one
    channel, else ``I``'s kernels repeated cyclically and scaled by ``I / channels``."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-channels // weight.shape[1])
    return weight.repeat(1, reps, *([1] * (weight.dim() - 2)))[:, :channels] * (weight.shape[1] / channels)


def load_encoder_weights(net: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict",
                         verbose: bool = True) -> EncoderLoadReport:
    """Copy ``state_dict`` (2D encoder tensors) into ``net.encoder``; see the module docstring.

    Raises :class:`FPNError` when ``net`` has no 2D encoder or not one tensor fits.
    """
    kind = getattr(net, "encoder_input", None)
    if kind is None:
        raise FPNError(f"{type(net).__name__} has no 2D encoder to load weights into")
    own = net.encoder.state_dict()
    report = EncoderLoadReport(source=source, total=len(own))
    report.unexpected = sum(1 for k in state_dict if k not in own)
    stem = next(k for k, v in own.items() if v.dim() >= 4)  # the first conv: the only one whose input may differ
    with torch.no_grad():
        for name, tensor in own.items():
            src = state_dict.get(name)
            if src is None:
                report.missing.append(name)
                continue
            adapted = False
            if name == stem and src.dim() == 4 and src.shape[1] != tensor.shape[1]:
                src, adapted = adapt_input_channels(src.float(), tensor.shape[1]), True
            if kind == "inflated" and src.dim() == 4 and tensor.dim() == 5:
                src, adapted = inflate_kernel(src.float(), tensor.shape[-1]), True
            if tuple(src.shape) != tuple(tensor.shape):
                report.shape_mismatch.append(f"{name}: encoder {list(tensor.shape)} vs file {list(src.shape)}")
                continue
            tensor.copy_(src.to(tensor.dtype))
            (report.adapted if adapted else report.loaded).append(name)
    if not report.loaded and not report.adapted:
        raise FPNError(f"--encoder-weights {source}: no tensor matches the {type(net).__name__} encoder by name and "
                       f"shape ({len(state_dict)} in the file, {len(own)} in the encoder): is it a state dict of "
                       f"this encoder?")
    if verbose:
        print(report.describe())
    return report
