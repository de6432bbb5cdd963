"""Image I/O round trips, projection-axis detection, the (B, D, A) read path and en-face resampling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from raw_dataset import SHAPE, SPACING, make_label, make_raw_dataset, make_volume

from fpnunet.errors import FPNError
from fpnunet.io import find_projection_axis, read_image, resample_to_shape, to_bda, write_image
from fpnunet.plans.fingerprint import verify_and_fingerprint
from fpnunet.plans.plan import Plan
from fpnunet.preprocessing.preprocess import load_case_raw
from fpnunet.raw_dataset import list_cases, load_dataset_json


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ending", [".nii.gz", ".mha", ".nrrd"])
def test_round_trip_3d(tmp_path: Path, ending: str):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(3, 5, 7)).astype(np.float32)
    spacing, origin = (0.12, 0.0039, 0.0113), (1.5, -2.0, 3.25)
    p = tmp_path / f"vol{ending}"
    write_image(p, arr, spacing, origin=origin)
    img = read_image(p)
    assert img.array.shape == (3, 5, 7) and img.ndim == 3
    np.testing.assert_array_equal(img.array, arr)
    assert img.spacing == pytest.approx(spacing, rel=1e-6)  # NIfTI stores float32
    assert img.origin == pytest.approx(origin, rel=1e-6)
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # atomic: no temp left


@pytest.mark.parametrize("ending", [".nii.gz", ".mha", ".nrrd", ".png", ".tif"])
def test_round_trip_2d(tmp_path: Path, ending: str):
    arr = (np.arange(6 * 9).reshape(6, 9) % 7).astype(np.uint8)
    spacing = (0.12, 0.0113)
    p = tmp_path / f"lab{ending}"
    write_image(p, arr, spacing, origin=(4.0, 5.0))
    img = read_image(p)
    assert img.array.shape == (6, 9)
    np.testing.assert_array_equal(img.array, arr)
    assert img.spacing == pytest.approx(spacing, rel=1e-6)
    if ending not in (".png", ".tif"):  # PNG and TIFF lose the origin
        assert img.origin == pytest.approx((4.0, 5.0))


def test_png_refuses_float(tmp_path: Path):
    with pytest.raises(FPNError, match="PNG stores only uint8/uint16"):
        write_image(tmp_path / "x.png", np.full((3, 3), 0.5), (1.0, 1.0))
    assert not list(tmp_path.iterdir())


def test_png_uint16_kept(tmp_path: Path):
    arr = np.array([[0, 300], [65535, 7]], dtype=np.int32)
    write_image(tmp_path / "x.png", arr, (1.0, 1.0))
    out = read_image(tmp_path / "x.png").array
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)


def test_read_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FPNError, match=r"missing\.nii\.gz: file not found"):
        read_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.mha"
    bad.write_text("not an image")
    with pytest.raises(FPNError, match=r"bad\.mha: SimpleITK cannot read"):
        read_image(bad)


# ----------------------------------------------------------------------------- projection axis
@pytest.mark.parametrize(
    "volume_shape,enface_shape,expected",
    [
        ((49, 496, 512), (49, 512), 1),
        ((496, 49, 512), (49, 512), 0),
        ((49, 512, 496), (49, 512), 2),
        ((64, 64, 64), (64, 64), None),  # every axis fits: ambiguous
        ((49, 496, 512), (50, 512), None),  # none fits
        ((49, 512), (49, 512), None),  # not a volume
    ],
)
def test_find_projection_axis(volume_shape, enface_shape, expected):
    assert find_projection_axis(volume_shape, enface_shape) == expected


def test_to_bda_moves_depth_to_axis_1():
    v = make_volume()
    for axis in range(3):
        stored = np.moveaxis(v, 1, axis)
        np.testing.assert_array_equal(to_bda(stored, axis), v)


@pytest.mark.parametrize("axis", [0, 2])
def test_dataset_with_depth_on_another_axis_reads_as_bda(tmp_path: Path, axis: int):
    ds = make_raw_dataset(tmp_path, n=2, labelled=(0,), axis=axis)
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["projection_axis"] == axis
    assert fp["cases"]["case_000"]["shape"] == list(SHAPE)
    assert fp["cases"]["case_000"]["spacing"] == pytest.approx(list(SPACING), rel=1e-5)
    info = load_dataset_json(ds)
    plan = Plan(dataset_name=ds.name, projection_axis=axis, enface_modalities=["FAF"])
    cf = list_cases(ds, info)[0]
    channels, geometry, enface, label = load_case_raw(cf, info, plan)
    assert len(channels) == 1
    np.testing.assert_allclose(channels[0], make_volume(seed=0))  # the generator's (B, D, A) volume
    assert geometry.shape == (SHAPE[0], SHAPE[2])
    assert geometry.spacing == pytest.approx((SPACING[0], SPACING[2]), rel=1e-5)
    assert label is not None and label.dtype == np.uint8
    np.testing.assert_array_equal(label, make_label())
    assert enface["FAF"].shape == (SHAPE[0], SHAPE[2]) and enface["FAF"].dtype == np.float32


# ----------------------------------------------------------------------------- resampling
def test_resample_label_preserves_values():
    lab = np.zeros((8, 12), np.uint8)
    lab[2:6, 3:9] = 2
    lab[0, 0] = 5
    up = resample_to_shape(lab, (16, 24), is_label=True)
    assert up.shape == (16, 24) and up.dtype == np.uint8
    assert set(np.unique(up)) == {0, 2, 5}
    assert np.count_nonzero(up == 2) == 4 * np.count_nonzero(lab == 2)  # exact 2x nearest neighbour
    down = resample_to_shape(up, (8, 12), is_label=True)
    np.testing.assert_array_equal(down, lab)
    assert set(np.unique(resample_to_shape(lab, (5, 7), is_label=True))) <= {0, 2, 5}


def test_resample_image_same_field_of_view():
    img = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))  # ramp along A
    out = resample_to_shape(img, (4, 16), is_label=False)
    assert out.shape == (4, 16)
    # pixel centres of both grids span the same field: the ramp keeps its values at the centres
    expected = (np.arange(16) + 0.5) / 16 * 64 - 0.5
    np.testing.assert_allclose(out[0], expected / 63, atol=1e-5)
    same = resample_to_shape(img, (32, 64), is_label=False)
    assert same is img
