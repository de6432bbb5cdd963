"""Overlay pictures: an en-face image with lesion outlines, a scale bar in mm, areas and Dice; and
that en-face image itself (:func:`enface_background`).

Geometry of the picture (what the tests check):

* the en-face plane ``(B, A)`` is shown with square physical pixels: each en-face pixel becomes a
  block of ``fB x fA`` screen pixels (:func:`display_factors`), so an OCT scan whose B-scans lie
  ten times farther apart than its A-scans is not squashed; the image part of the PNG is
  ``B * fB`` rows by ``A * fA`` columns, B-scan 0 at the top, A-scan 0 at the left;
* below the image a text strip of :data:`FOOTER_PX` rows carries the legend and the areas;
* an outline is drawn in its exact colour, never blended: the prediction's outline lies on the
  inside of the predicted mask's boundary (on en-face pixels of the mask that touch a pixel outside
  it or the image edge), the reference's on the outside of the reference's boundary, so where the
  two agree both lines stay visible side by side;
* the scale bar (white, bottom right) and the corner texts are white on the image.

Class colours come from ``dataset.json`` ``"colors"`` (``{"GA": "#e6194b"}``, any matplotlib
colour) and default to a fixed palette; the reference outline is :data:`REFERENCE_COLOUR`.

The en-face picture an outline is drawn on (:func:`enface_background`) is the case's SLO, else a
projection of its volume. For case ``CASE`` the folders searched are the ones given plus their
siblings in the raw layout (``imagesTs`` -> ``enfaceTs``; ``labelsTs`` -> ``imagesTs``,
``enfaceTs``; a dataset folder -> its ``enfaceTs``, ``enfaceTr``, ``imagesTs``, ``imagesTr``):
``enface*/CASE_SLO<ending>`` (the scanner's SLO/NIR image, resampled onto the mask's grid when its
pixel grid differs), else ``images*/CASE_0000<ending>``: the mean over depth of the retina band
(:func:`fpnunet.retina.detect_retina_band`) of channel 0, each B-scan's row evened out
(:func:`projection`). Nothing found (or unreadable) gives no picture: the outline is drawn on a
dark background and the reason is returned, never raised (a missing picture must not fail a
prediction).
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter1d

from fpnunet.errors import FPNError
from fpnunet.io import find_projection_axis, read_image, resample_to_shape, squeeze_2d, to_bda
from fpnunet.raw_dataset import DATASET_FILE, enface_dir, enface_stem, find_image, images_dir, layout_split, volume_stem
from fpnunet.retina import detect_retina_band

__all__ = ["Layer", "class_colours", "display_factors", "outline", "compose", "render_overlay",
           "render_thumbnail", "REFERENCE_COLOUR", "FOOTER_PX", "search_folders", "find_sources",
           "enface_background", "projection"]

RGB = tuple[int, int, int]
PALETTE: tuple[RGB, ...] = ((255, 48, 48), (0, 170, 255), (255, 200, 0), (200, 80, 255), (255, 120, 0),
                            (0, 220, 160), (255, 80, 200), (150, 200, 0))
REFERENCE_COLOUR: RGB = (0, 255, 0)
FOOTER_PX = 40
MIN_SIDE = 384
MAX_FACTOR = 32
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass
class Layer:
    """One outline: a binary en-face mask ``(B, A)``, its colour, and which side of the boundary
    the line is drawn on (``inner``: inside the mask, else just outside it)."""

    mask: np.ndarray
    colour: RGB
    inner: bool = True


def _rgb(value: object, where: str) -> RGB:
    from matplotlib.colors import to_rgb

    try:
        r, g, b = to_rgb(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise FPNError(f"{where}: {value!r} is not a colour (use a name like \"red\" or \"#ff3030\")") from None
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def class_colours(labels: Mapping[str, int], dataset_json: Mapping | None = None,
                  source: str = DATASET_FILE) -> dict[str, RGB]:
    """Colour of each foreground class: ``dataset_json["colors"][name]`` when given, else the palette."""
    given = (dataset_json or {}).get("colors", {}) or {}
    if not isinstance(given, dict):
        raise FPNError(f"{source}: 'colors' must map a class name to a colour, e.g. {{\"GA\": \"#ff3030\"}}")
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise FPNError(f"{source}: 'colors' names class(es) {', '.join(unknown)} that 'labels' does not have")
    fg = sorted(((n, v) for n, v in labels.items() if int(v) != 0), key=lambda nv: int(nv[1]))
    return {n: _rgb(given[n], f"{source}: colors[{n!r}]") if n in given else PALETTE[i % len(PALETTE)]
            for i, (n, _) in enumerate(fg)}


def display_factors(shape: Sequence[int], spacing: Sequence[float], min_side: int = MIN_SIDE) -> tuple[int, int]:
    """Integer block size ``(fB, fA)`` per en-face pixel: square physical screen pixels, and at
    least ``min_side`` screen pixels on the longer side (no factor above :data:`MAX_FACTOR`)."""
    sb, sa = (float(s) if s and s > 0 and math.isfinite(s) else 1.0 for s in spacing)
    p = min(sb, sa)
    fb, fa = max(1, round(sb / p)), max(1, round(sa / p))
    if fb > MAX_FACTOR or fa > MAX_FACTOR:
        k = max(fb, fa) / MAX_FACTOR
        fb, fa = max(1, round(fb / k)), max(1, round(fa / k))
    longest = max(shape[0] * fb, shape[1] * fa)
    zoom = max(1, math.ceil(min_side / max(longest, 1)))
    zoom = min(zoom, MAX_FACTOR // max(fb, fa)) or 1
    return fb * zoom, fa * zoom


def outline(mask: np.ndarray, thickness: int = 2, inner: bool = True) -> np.ndarray:
    """The ``thickness``-pixel band just inside (``inner``) or just outside a binary mask.

    The image edge counts as outside, so a lesion touching it is closed there."""
    m = np.asarray(mask, dtype=bool)
    if inner:
        return m & ~ndimage.binary_erosion(m, _CROSS, iterations=thickness, border_value=0)
    return ndimage.binary_dilation(m, _CROSS, iterations=thickness) & ~m


def _grey(background: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """uint8 grey ``(B, A)``: the background stretched between its 1st and 99th percentiles."""
    if background is None:
        return np.full(shape, 24, dtype=np.uint8)
    bg = np.asarray(background, dtype=np.float64)
    finite = bg[np.isfinite(bg)]
    if finite.size == 0:
        return np.full(shape, 24, dtype=np.uint8)
    lo, hi = np.percentile(finite, [1, 99])
    scaled = np.clip((np.nan_to_num(bg, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    return (scaled * 255).astype(np.uint8)


def compose(background: np.ndarray | None, layers: Sequence[Layer], factors: tuple[int, int],
            thickness: int = 2) -> np.ndarray:
    """RGB uint8 ``(B*fB, A*fA, 3)``: the grey background with every layer's outline painted on."""
    shape = tuple(layers[0].mask.shape) if layers else tuple(np.asarray(background).shape)
    fb, fa = factors
    grey = np.repeat(np.repeat(_grey(background, shape), fb, 0), fa, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    # thicker than one en-face pixel would leave the boundary pixels: keep the line on them
    thick = max(1, min(thickness, fb, fa))
    for layer in layers:
        big = np.repeat(np.repeat(np.asarray(layer.mask, dtype=bool), fb, 0), fa, 1)
        rgb[outline(big, thick, layer.inner)] = layer.colour
    return rgb


def _nice_length(max_mm: float) -> float:
    """The largest of 0.1, 0.2, 0.5, 1, 2, 5 ... mm not above ``max_mm``."""
    if max_mm <= 0 or not math.isfinite(max_mm):
        return 0.0
    base = 10 ** math.floor(math.log10(max_mm))
    return max(m * base for m in (1, 2, 5) if m * base <= max_mm)


def render_overlay(background: np.ndarray | None, spacing: Sequence[float], layers: Sequence[Layer], *,
                   title: str = "", corner: str = "", footer: Sequence[tuple[str, RGB]] = (),
                   unit: str = "mm") -> bytes:
    """PNG bytes: the composed image (:func:`compose`), ``title`` top left, ``corner`` (e.g. the
    Dice) top right, a white scale bar bottom right, and the ``footer`` texts (each in its colour)
    in a strip below the image."""
    from matplotlib.figure import Figure

    shape = tuple(layers[0].mask.shape) if layers else tuple(np.asarray(background).shape)
    factors = display_factors(shape, spacing)
    rgb = compose(background, layers, factors)
    h, w = rgb.shape[:2]
    # scale bar: about a fifth of the width, 4 px high, 12 px from the bottom-right corner
    mm_per_px = float(spacing[1]) / factors[1] if spacing[1] > 0 else 0.0
    length = _nice_length(0.25 * w * mm_per_px) if mm_per_px else 0.0
    bar_text = ""
    if length > 0:
        n = max(1, int(round(length / mm_per_px)))
        y0, x1 = h - 12 - 4, w - 12
        if y0 > 0 and x1 - n > 0:
            rgb[y0:y0 + 4, x1 - n:x1] = 255
            bar_text = f"{length:g} {unit}"
    dpi = 100
    fig = Figure(figsize=(w / dpi, (h + FOOTER_PX) / dpi), dpi=dpi, facecolor="black")
    fig.figimage(rgb, xo=0, yo=FOOTER_PX, origin="upper")
    box = {"facecolor": "black", "alpha": 0.55, "pad": 2, "edgecolor": "none"}

    def px(x: float, y: float) -> tuple[float, float]:  # screen pixels from the top left -> figure fraction
        return x / w, 1 - y / (h + FOOTER_PX)

    if title:
        fig.text(*px(6, 6), title, color="white", fontsize=9, va="top", ha="left", bbox=box)
    if corner:
        fig.text(*px(w - 6, 6), corner, color="white", fontsize=10, va="top", ha="right", bbox=box,
                 fontweight="bold")
    if bar_text:
        fig.text(*px(w - 12, h - 20), bar_text, color="white", fontsize=8, va="bottom", ha="right", bbox=box)
    x = 6.0
    for text, colour in footer:
        t = fig.text(*px(x, h + FOOTER_PX / 2), text, color=tuple(c / 255 for c in colour), fontsize=9,
                     va="center", ha="left")
        x += 7.0 * len(text) + 14  # approximate advance; the strip is wide enough for a few entries
        del t
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="black")
    return buf.getvalue()


def render_thumbnail(background: np.ndarray | None, spacing: Sequence[float], layers: Sequence[Layer],
                     size: int = 160) -> bytes:
    """A small PNG (longer side ``size``) with one-pixel outlines drawn at thumbnail resolution."""
    from PIL import Image as PILImage

    shape = tuple(layers[0].mask.shape) if layers else tuple(np.asarray(background).shape)
    fb, fa = display_factors(shape, spacing, min_side=1)
    h, w = shape[0] * fb, shape[1] * fa
    scale = size / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    grey = PILImage.fromarray(_grey(background, shape)).resize((tw, th), PILImage.BILINEAR)
    rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=2).copy()
    for layer in layers:
        small = PILImage.fromarray(np.asarray(layer.mask, dtype=np.uint8) * 255).resize((tw, th), PILImage.NEAREST)
        rgb[outline(np.asarray(small) > 0, 1, layer.inner)] = layer.colour
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- the en-face picture

_SPLITS = ("Ts", "Tr")


def search_folders(folders: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The given folders and their raw-layout siblings, existing ones only, in a stable order."""
    out: list[Path] = []
    for f in folders:
        if f is None:
            continue
        f = Path(f)
        cands = [f]
        split = layout_split(f)
        if split is not None:
            cands += [enface_dir(f.parent, split), images_dir(f.parent, split)]
        cands += [d(f, s) for s in _SPLITS for d in (enface_dir, images_dir)]
        out += [c for c in cands if c.is_dir() and c not in out]
    return out


def find_sources(case: str, folders: Iterable[Path]) -> tuple[Path | None, Path | None]:
    """``(SLO file, channel-0 volume file)`` of ``case`` in ``folders`` (first hit each)."""
    slo = vol = None
    for f in folders:
        slo = slo or find_image(f, enface_stem(case, "SLO"))
        vol = vol or find_image(f, volume_stem(case))
    return slo, vol


def projection(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the retina band along depth ``axis`` of a 3D volume: ``(B, A)`` float32.

    Each B-scan's row is then centred on its median and scaled by its interquartile range (B-scans
    differ in overall brightness, which would stripe the picture) and lightly smoothed along A
    (Gaussian, sigma 1 pixel) against speckle."""
    bda = to_bda(np.asarray(volume, dtype=np.float32), axis)
    top, bottom = detect_retina_band(bda)
    proj = bda[:, top:bottom].mean(axis=1, dtype=np.float64)
    q1, med, q3 = np.percentile(proj, [25, 50, 75], axis=1, keepdims=True)
    proj = (proj - med) / np.maximum(q3 - q1, 1e-6 * max(1.0, float(np.abs(proj).max())))
    return gaussian_filter1d(proj, 1.0, axis=1, mode="nearest").astype(np.float32)


def enface_background(case: str, shape: tuple[int, int], folders: Iterable[str | os.PathLike | None],
                      projection_axis: int | str = "auto") -> tuple[np.ndarray | None, str]:
    """The picture of ``case`` on the en-face grid ``shape`` ``(B, A)`` and where it came from
    (``"SLO"``, ``"volume projection"`` or why there is none)."""
    slo, vol = find_sources(case, search_folders(folders))
    try:
        if slo is not None:
            img = squeeze_2d(read_image(slo).array)
            if img.ndim == 2:
                return resample_to_shape(img.astype(np.float32), shape, is_label=False), "SLO"
        if vol is not None:
            arr = read_image(vol).array
            if arr.ndim == 3:
                axis = projection_axis if isinstance(projection_axis, int) else find_projection_axis(arr.shape, shape)
                proj = projection(arr, 1 if axis is None else axis)
                return resample_to_shape(proj, shape, is_label=False), "volume projection"
    except FPNError as exc:
        return None, f"no picture ({exc})"
    return None, "no SLO or volume found"
