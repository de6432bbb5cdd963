"""Synthetic OCT/GA data: files, geometry, determinism, lesion realism, difficulty, CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fpnunet.atomic import load_json
from fpnunet.commands.make_synthetic import main
from fpnunet.errors import FPNError
from fpnunet.io import find_projection_axis, read_image
from fpnunet.raw_dataset import list_cases, load_dataset_json
from fpnunet.synthetic.case import generate_case
from fpnunet.synthetic.dataset import make_synthetic_dataset
from fpnunet.synthetic.difficulty import oracle_threshold_dice
from fpnunet.synthetic.geometry import DEFAULT_SHAPE, FIELD_OF_VIEW_MM, spacing_for_shape

TINY = (8, 96, 32)


def _case(seed: int, index: int, shape: tuple[int, int, int]):
    return generate_case(shape, np.random.default_rng([seed, 0, index]))


# ----------------------------------------------------------------------------- files and geometry
def test_tiny_dataset_files_shapes_dtypes_spacing(tiny_raw_dataset: Path) -> None:
    info = load_dataset_json(tiny_raw_dataset)
    cases = list_cases(tiny_raw_dataset, info, "Tr")
    assert [c.case for c in cases] == [f"SynthGA_{i:03d}" for i in range(8)]
    assert sum(c.labelled for c in cases) == 6
    assert [c.labelled for c in cases] == [True] * 6 + [False] * 2
    expected_spacing = (6.0 / 8, 1.9 / 96, 6.0 / 32)
    for c in cases:
        assert c.images[0] is not None and set(c.enface) == {"FAF", "SLO"}
        vol = read_image(c.images[0])
        assert vol.array.shape == TINY and vol.array.dtype == np.float32
        assert 0.0 <= vol.array.min() and vol.array.max() <= 1.0
        assert np.allclose(vol.spacing, expected_spacing, rtol=1e-5)
        assert sitk.ReadImage(str(c.images[0])).GetSize() == (32, 96, 8)  # SimpleITK (A, D, B)
        for mod in ("FAF", "SLO"):
            img = read_image(c.enface[mod])
            assert img.array.shape == (8, 32) and img.array.dtype == np.float32
            assert 0.0 <= img.array.min() and img.array.max() <= 1.0
            assert np.allclose(img.spacing, (0.75, 6.0 / 32), rtol=1e-5)
        if c.labelled:
            lab = read_image(c.label)
            assert lab.array.shape == (8, 32) and lab.array.dtype == np.uint8
            assert set(np.unique(lab.array)) <= {0, 1}
            assert np.allclose(lab.spacing, (0.75, 6.0 / 32), rtol=1e-5)
            assert find_projection_axis(vol.array.shape, lab.array.shape) == 1
    test_cases = list_cases(tiny_raw_dataset, info, "Ts")
    assert [c.case for c in test_cases] == ["SynthGA_T000", "SynthGA_T001"]
    for c in test_cases:
        assert read_image(c.images[0]).array.shape == TINY
        assert read_image(tiny_raw_dataset / "labelsTs" / f"{c.case}.nii.gz").array.shape == (8, 32)


def test_dataset_json_contents(tiny_raw_dataset: Path) -> None:
    d = load_json(tiny_raw_dataset / "dataset.json")
    assert d["name"] == "SynthGA"
    assert d["channel_names"] == {"0": "OCT"}
    assert d["enface_modalities"] == ["FAF", "SLO"]
    assert d["labels"] == {"background": 0, "GA": 1}
    assert d["file_ending"] == ".nii.gz"
    assert d["projection_axis"] == "auto"
    patients = d["patients"]
    assert sorted(patients) == [f"SynthGA_{i:03d}" for i in range(8)]
    eyes: dict[str, int] = {}
    for p in patients.values():
        eyes[p] = eyes.get(p, 0) + 1
    assert set(eyes.values()) <= {1, 2}
    assert d["synthetic"]["complete"] is True and d["synthetic"]["seed"] == 0


def test_spacing_is_anisotropic_like_spectralis() -> None:
    sb, sd, sa = spacing_for_shape((49, 496, 512))
    assert sb == pytest.approx(6.0 / 49) and sa == pytest.approx(6.0 / 512) and sd == pytest.approx(1.9 / 496)
    assert sb > 10 * sa
    c = _case(0, 0, (12, 64, 40))  # odd shapes work too
    assert c.volume.shape == (12, 64, 40) and c.label.shape == (12, 40)
    assert all(img.shape == (12, 40) for img in c.enface.values())
    assert c.spacing == pytest.approx(tuple(f / s for f, s in zip(FIELD_OF_VIEW_MM, (12, 64, 40))))
    assert DEFAULT_SHAPE[0] % 4 == 0 and DEFAULT_SHAPE[2] % 16 == 0


@pytest.mark.parametrize("fraction, expected", [(0.4, 2), (0.01, 1), (1.0, 5)])
def test_labelled_fraction_is_honoured(tmp_path: Path, fraction: float, expected: int) -> None:
    out = make_synthetic_dataset(tmp_path / "Dataset901_Frac", n=5, labelled_fraction=fraction, shape=TINY,
                                 num_test=0, show_progress=False)
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert labels == [f"Frac_{i:03d}.nii.gz" for i in range(expected)]
    assert len(list((out / "imagesTr").iterdir())) == 5
    assert not (out / "imagesTs").exists()


# ----------------------------------------------------------------------------- determinism
def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): read_image(p).array for p in sorted(folder.rglob("*.nii.gz"))}


def test_same_seed_same_files_and_n_does_not_change_earlier_cases(tmp_path: Path) -> None:
    kw = {"shape": TINY, "num_test": 1, "show_progress": False}
    a = _arrays(make_synthetic_dataset(tmp_path / "a", n=2, seed=3, **kw))
    b = _arrays(make_synthetic_dataset(tmp_path / "b", n=2, seed=3, **kw))
    c = _arrays(make_synthetic_dataset(tmp_path / "c", n=3, seed=3, **kw))
    other = _arrays(make_synthetic_dataset(tmp_path / "d", n=2, seed=4, **kw))
    assert a.keys() == b.keys() and len(a) == 2 * 4 + 4  # test case: volume, FAF, SLO (enfaceTs), label
    for k in a:
        assert np.array_equal(a[k], b[k]), k
        assert np.array_equal(a[k], c[k]), k  # a third case leaves the first two (and the test case) alone
    assert set(c) - set(a) == {f"{d}/SynthGA_002{s}.nii.gz" for d, s in
                               [("imagesTr", "_0000"), ("enfaceTr", "_FAF"), ("enfaceTr", "_SLO"), ("labelsTr", "")]}
    assert not np.array_equal(a["imagesTr/SynthGA_000_0000.nii.gz"], other["imagesTr/SynthGA_000_0000.nii.gz"])


def test_generate_case_deterministic_per_rng() -> None:
    x, y, z = _case(7, 1, TINY), _case(7, 1, TINY), _case(7, 2, TINY)
    assert np.array_equal(x.volume, y.volume) and np.array_equal(x.label, y.label)
    assert all(np.array_equal(x.enface[k], y.enface[k]) for k in x.enface)
    assert not np.array_equal(x.volume, z.volume)


# ----------------------------------------------------------------------------- realism
def _depth_band(volume: np.ndarray, surface: np.ndarray, lo_px: int, hi_px: int) -> np.ndarray:
    """Mean of rows ``surface + lo_px .. surface + hi_px`` (inclusive) of a ``(B, D, A)`` volume: ``(B, A)``."""
    offsets = np.arange(lo_px, hi_px + 1)
    idx = np.clip(np.round(surface).astype(int)[:, None, :] + offsets[None, :, None], 0, volume.shape[1] - 1)
    return np.take_along_axis(volume, idx, axis=1).mean(axis=1)


def test_lesion_changes_are_aligned_with_the_label() -> None:
    shape = (16, 192, 64)
    sd = spacing_for_shape(shape)[1]
    checked = 0
    for i in range(8):
        c = _case(0, i, shape)
        lab = c.label.astype(bool)
        if lab.sum() < 10 or (~lab).sum() < 10:
            continue
        checked += 1
        bm = c.surfaces["BM"]
        rpe = _depth_band(c.volume, bm, -int(round(0.045 / sd)), 0)  # RPE / outer retina band above Bruch's
        sub = _depth_band(c.volume, bm, int(round(0.02 / sd)), int(round(0.15 / sd)))  # choroid under it
        assert rpe[lab].mean() < 0.8 * rpe[~lab].mean(), f"case {i}: RPE not darker inside GA"
        assert sub[lab].mean() > 1.05 * sub[~lab].mean(), f"case {i}: no hypertransmission inside GA"
        faf = c.enface["FAF"]
        assert faf[lab].mean() < 0.5 * faf[~lab].mean(), f"case {i}: FAF not dark inside GA"
        slo = c.enface["SLO"]
        assert abs(slo[lab].mean() - slo[~lab].mean()) < 0.5 * slo[~lab].mean()  # SLO: subtle only
        # the retina sits between the ILM and Bruch's membrane: vitreous above is dark
        vitreous = _depth_band(c.volume, c.surfaces["ILM"], -int(round(0.1 / sd)), -int(round(0.03 / sd)))
        assert vitreous.mean() < 0.5 * rpe[~lab].mean()
    assert checked >= 4


def test_some_cases_are_lesion_free_and_sizes_vary() -> None:
    fractions = [_case(0, i, TINY).label.mean() for i in range(40)]
    assert 0 < sum(f == 0 for f in fractions) < 20
    lesion = [f for f in fractions if f > 0]
    assert min(lesion) < 0.05 and max(lesion) > 0.2


def test_mean_projection_threshold_does_not_solve_it() -> None:
    """A depth-mean projection thresholded with hindsight stays far from solving the task,
    while a depth-aware feature (choroid under Bruch's membrane / RPE band) nearly does."""
    shape = (16, 128, 64)
    sd = spacing_for_shape(shape)[1]
    proj, aware, labels = [], [], []
    for i in range(16):
        c = _case(0, i, shape)
        proj.append(c.volume.mean(axis=1))
        rpe = _depth_band(c.volume, c.surfaces["BM"], -int(round(0.05 / sd)), 0)
        sub = _depth_band(c.volume, c.surfaces["BM"], int(round(0.02 / sd)), int(round(0.15 / sd)))
        aware.append(sub / (rpe + 1e-3))
        labels.append(c.label)
    mean_proj = oracle_threshold_dice(proj, labels)
    assert mean_proj["cases"] >= 12
    assert mean_proj["per_case"] < 0.6  # measured about 0.36
    assert mean_proj["global"] < 0.5  # measured about 0.28
    assert oracle_threshold_dice(aware, labels)["global"] > 0.8  # the volume does hold the answer


def test_oracle_threshold_dice_both_polarities() -> None:
    lab = np.zeros((4, 6), np.uint8)
    lab[1:3, 2:5] = 1
    bright = lab * 2.0 + 0.1
    assert oracle_threshold_dice([bright], [lab])["per_case"] == pytest.approx(1.0)
    assert oracle_threshold_dice([-bright], [lab])["global"] == pytest.approx(1.0)
    assert oracle_threshold_dice([bright], [np.zeros_like(lab)])["cases"] == 0


# ----------------------------------------------------------------------------- regeneration and errors
def test_regeneration_replaces_stale_cases(tmp_path: Path) -> None:
    out = tmp_path / "Dataset902_Re"
    make_synthetic_dataset(out, n=4, shape=TINY, num_test=2, show_progress=False)
    make_synthetic_dataset(out, n=2, shape=TINY, num_test=0, show_progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["Re_000_0000.nii.gz", "Re_001_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["Re_000.nii.gz", "Re_001.nii.gz"]
    assert list((out / "imagesTs").iterdir()) == []


def test_refuses_a_non_empty_folder_that_is_not_synthetic(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FPNError, match="not empty"):
        make_synthetic_dataset(tmp_path, n=1, shape=TINY, show_progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "Dataset900_SynthGA"
    rc = main(["-o", str(out), "-n", "3", "--labelled-fraction", "0.5", "--seed", "1", "--shape", "8", "96", "32",
               "--num-test", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "3 training cases (2 labelled) + 1 test" in printed
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 3
    assert len(list((out / "labelsTr").glob("*.nii.gz"))) == 2
    assert read_image(out / "imagesTr" / "SynthGA_000_0000.nii.gz").array.shape == TINY


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n/--num-cases must be an integer >= 1"),
    (["--labelled-fraction", "0"], "--labelled-fraction must be in (0, 1]"),
    (["--labelled-fraction", "1.5"], "--labelled-fraction must be in (0, 1]"),
    (["--shape", "8", "0", "32"], "--shape must be three positive integers"),
    (["--shape", "8", "8", "32"], "depth D must be >= 16"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--num-test", "-2"], "--num-test must be an integer >= 0"),
    (["--file-ending", ".png"], "--file-ending '.png' cannot hold a float 3D volume"),
])
def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                   message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-o", str(tmp_path / "Dataset900_SynthGA"), "--no-progress", *args])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "Dataset900_SynthGA").exists()  # nothing written


def test_cli_argparse_errors_exit_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-o", str(tmp_path / "x"), "--shape", "8", "96"])
    assert exc.value.code == 2
    assert "--shape" in capsys.readouterr().err


def test_enface_lesion_contrast_fades_the_lesion_in_faf_and_slo_only(tmp_path) -> None:
    def case(contrast: float):
        return generate_case((32, 48, 32), np.random.default_rng([4, 0, 1]), enface_lesion_contrast=contrast)

    base, same, faint = case(1.0), case(1.0), case(0.1)
    plain = generate_case((32, 48, 32), np.random.default_rng([4, 0, 1]))
    for mod in ("FAF", "SLO"):
        assert np.array_equal(base.enface[mod], plain.enface[mod])
        assert np.array_equal(base.enface[mod], same.enface[mod])
    assert np.array_equal(faint.volume, base.volume) and np.array_equal(faint.label, base.label)
    lesion = base.label > 0
    assert 0.05 < lesion.mean() < 0.95

    def gap(img: np.ndarray) -> float:  # how far the lesion's mean is from the rest
        return abs(float(img[lesion].mean() - img[~lesion].mean()))

    for mod in ("FAF", "SLO"):
        assert gap(faint.enface[mod]) < 0.35 * gap(base.enface[mod]), mod
    out = make_synthetic_dataset(tmp_path / "Dataset953_Faint", n=2, num_test=2, shape=(16, 32, 16),
                                 show_progress=False, enface_lesion_contrast=0.1)
    assert load_json(out / "dataset.json")["synthetic"]["enface_lesion_contrast"] == 0.1
    with pytest.raises(FPNError, match="--enface-lesion-contrast"):
        make_synthetic_dataset(tmp_path / "Dataset954_Bad", n=2, shape=(16, 32, 16), enface_lesion_contrast=1.5)
    assert not (tmp_path / "Dataset954_Bad").exists()


def test_two_classes_add_the_perilesional_band_around_ga_only(tmp_path) -> None:
    from scipy import ndimage

    rng = [4, 0, 1]
    one = generate_case((16, 48, 64), np.random.default_rng(rng))
    two = generate_case((16, 48, 64), np.random.default_rng(rng), classes=2)
    assert np.array_equal(one.volume, two.volume) and np.array_equal(one.label == 1, two.label == 1)
    band = two.label == 2
    assert band.any() and not (one.label[band]).any()
    # the band touches GA and lies within a few pixels of it (0.2 mm is about 2 A-scans of 94 um)
    assert (band & ndimage.binary_dilation(one.label == 1)).any()
    assert not (band & ~ndimage.binary_dilation(one.label == 1, iterations=5)).any()
    out = make_synthetic_dataset(tmp_path / "Dataset955_Two", n=2, shape=(16, 32, 16), num_test=2,
                                 show_progress=False, classes=2)
    meta = load_json(out / "dataset.json")
    assert meta["labels"] == {"background": 0, "GA": 1, "perilesional": 2} and meta["synthetic"]["classes"] == 2
    with pytest.raises(FPNError, match="--classes"):
        make_synthetic_dataset(tmp_path / "Dataset956_Bad", n=2, shape=(16, 32, 16), classes=3)
