"""Training data: loader batches, alignment of volume and en-face maps under augmentation,
oversampling, determinism per (seed, epoch), workers and error reporting.

Every test writes a tiny preprocessed folder in the layout of docs/layout.md.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from fpnunet.atomic import save_json, save_npy
from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration, TrainingDefaults
from fpnunet.plans.training_params import AugmentParams
from fpnunet.training.augment import get_train_transforms, load_margin
from fpnunet.training.data import EnfaceDataLoader, batch_rngs
from fpnunet.training.loader import default_num_workers, iterate_batches, make_train_loader

DEPTH = 16
BAND0, BAND1 = (4, 8), (10, 14)  # depth rows of the blob in channel 0 and channel 1
PATCH = (16, 32)
NO_INTENSITY = AugmentParams(p_brightness=0, p_contrast=0, p_noise=0)


def _blob(shape: tuple[int, int], seed: int) -> np.ndarray:
    """An asymmetric foreground: an ellipse plus a tail, at a seeded position."""
    rng = np.random.default_rng(seed)
    b, a = np.mgrid[: shape[0], : shape[1]]
    cb, ca = rng.integers(7, shape[0] - 7), rng.integers(12, shape[1] - 12)
    m = ((b - cb) / 6.0) ** 2 + ((a - ca) / 10.0) ** 2 <= 1
    m |= (b >= cb) & (b < cb + 3) & (a >= ca) & (a < ca + 16)
    return m


def write_case(folder: Path, name: str, shape: tuple[int, int] = (28, 40), seed: int = 0,
               labelled: bool = True, faf: bool = True, locations: bool = True) -> np.ndarray:
    """Volume ``(2, B, DEPTH, A)``: 1 on the retina, 1 + 4 on the blob's depth band (rows 4-8 in
    channel 0, 10-14 in channel 1), so ``depth-mean(channel 0) > 1.5`` is exactly the label. FAF is
    ``1 - 0.8 blob`` (the inverted target is ``0.8 blob``)."""
    blob = _blob(shape, seed)
    vol = np.ones((2, shape[0], DEPTH, shape[1]), np.float32)
    for c, (d0, d1) in enumerate((BAND0, BAND1)):
        vol[c, :, d0:d1, :] += 4.0 * blob[:, None, :]
    save_npy(vol, folder / f"{name}.npy")
    if labelled:
        save_npy(blob.astype(np.uint8), folder / f"{name}_seg.npy")
    if faf:
        save_npy((1.0 - 0.8 * blob).astype(np.float32), folder / f"{name}_FAF.npy")
    props = {"case": name, "labelled": labelled}
    if locations and labelled:
        props["class_locations"] = {"1": np.argwhere(blob).tolist()}
    save_json(props, folder / f"{name}.json")
    return blob


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A preprocessed dataset folder with ``depth16/`` holding 4 cases (one smaller than the patch on A)."""
    d = tmp_path / "Dataset999_T" / "depth16"
    d.mkdir(parents=True)
    for i in range(3):
        write_case(d, f"c{i}", seed=i)
    write_case(d, "small", shape=(24, 28), seed=5, locations=False)
    save_json({}, d.parent / "plans.json")
    return d.parent


CASES = ["c0", "c1", "c2", "small"]


def config(batch: int = 2) -> Configuration:
    return Configuration(patch_size=PATCH, batch_size=batch, depth=DEPTH, data_identifier="depth16",
                         training=TrainingDefaults(foreground_oversample=0.5))


def depth_mean(batch: dict, c: int = 0) -> np.ndarray:
    return batch["data"][:, c].mean(axis=2)  # (N, B, A)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def check_depth_bands(batch: dict) -> None:
    """On label pixels the blob sits in its depth band in each channel (depth not mixed with B/A)."""
    fg = (batch["target"][:, 0] > 0.5) & (batch["mask"][:, 0] > 0)
    for c, (d0, d1) in enumerate((BAND0, BAND1)):
        prof = batch["data"][:, c].transpose(0, 1, 3, 2)[fg]  # (pixels, D)
        if len(prof):
            inside = prof[:, d0:d1].mean(axis=1)
            outside = np.delete(prof, np.s_[d0:d1], axis=1).max(axis=1)
            assert np.all(inside > outside + 0.5)


def test_batch_shapes_and_dtypes(dataset: Path) -> None:
    for mode in ("seg", "FAF"):
        with make_train_loader(dataset, CASES, config(3), mode=mode, seed=0, epoch=0, num_workers=0) as loader:
            b = next(loader)
        assert b["data"].shape == (3, 2, *PATCH[:1], DEPTH, PATCH[1]) and b["data"].dtype == np.float32
        assert b["target"].shape == (3, 1, *PATCH) and b["target"].dtype == np.float32
        assert b["mask"].shape == (3, 1, *PATCH) and b["mask"].dtype == np.float32
        assert set(np.unique(b["mask"])) <= {0.0, 1.0}
        assert len(b["keys"]) == 3 and set(b["keys"]) <= set(CASES)
        assert b["batch_index"] == 0 and "aug_seed" not in b and "seg" not in b
        assert all(b[k].flags.c_contiguous for k in ("data", "target", "mask"))
    assert loader.loader.load_size == tuple(p + 2 * m for p, m in zip(PATCH, load_margin(PATCH, AugmentParams())))


def edge(m: np.ndarray) -> np.ndarray:
    """Pixels of a 2D boolean map with a differing 8-neighbour (the boundary, both sides)."""
    p = np.pad(m, 1, mode="edge")
    out = np.zeros_like(m)
    for db in (-1, 0, 1):
        for da in (-1, 0, 1):
            out |= p[1 + db: 1 + db + m.shape[0], 1 + da: 1 + da + m.shape[1]] != m
    return out


def test_seg_alignment_under_scaling_and_flips(dataset: Path) -> None:
    """Every sample scaled (label nearest, volume linear): the thresholded depth-mean matches the
    label up to single boundary pixels (bilinear vs nearest); a one-pixel shift would fail."""
    params = AugmentParams(p_scale=1.0, p_brightness=0, p_contrast=0, p_noise=0)
    inter = union = scaled = 0
    worst = 1.0
    with make_train_loader(dataset, CASES, config(4), seed=1, epoch=0, num_workers=0, params=params) as loader:
        for b in iterate_batches(loader, 15):
            dm = depth_mean(b)
            for n in range(4):
                pred, lab = dm[n] > 1.5, b["target"][n, 0] > 0.5
                inter, union = inter + (pred & lab).sum(), union + (pred | lab).sum()
                worst = min(worst, iou(pred, lab))
                assert not np.any((pred != lab) & ~edge(lab)), "a mismatch away from the label's boundary"
                valid = b["mask"][n, 0] > 0
                assert iou(dm[n] > 0.5, valid) > 0.95
                assert not np.any(((dm[n] > 0.5) != valid) & ~edge(valid))
                scaled += int(not set(np.unique(dm[n])) <= {0.0, 1.0, 2.0})
            assert set(np.unique(b["target"])) <= {0.0, 1.0}  # nearest: labels stay labels
            check_depth_bands(b)
    assert scaled > 30  # scaling (interpolation) really happened
    assert inter / union > 0.97, inter / union
    assert worst > 0.9


def test_flips_and_rot180_are_exact(dataset: Path) -> None:
    """Without scaling the augmented depth-mean equals the label exactly, and all four orientations
    (identity, flip B, flip A, 180-degree rotation) occur."""
    params = AugmentParams(p_scale=0.0, p_brightness=0, p_contrast=0, p_noise=0)
    transform = get_train_transforms(PATCH, "seg", params)
    loader = EnfaceDataLoader(dataset / "depth16", ["c0"], PATCH, 1, oversample_foreground=1.0, margin=(0, 0))
    seen = set()
    for i in range(40):
        raw = loader.make_batch(i)
        t0 = raw["target"][0, 0].copy()
        out = transform(**raw)
        t = out["target"][0, 0]
        np.testing.assert_array_equal(depth_mean(out)[0] > 1.5, t > 0.5)
        np.testing.assert_array_equal(depth_mean(out)[0] > 0.5, out["mask"][0, 0] > 0)
        check_depth_bands(out)
        for name, cand in (("id", t0), ("fB", t0[::-1]), ("fA", t0[:, ::-1]), ("rot", t0[::-1, ::-1])):
            if np.array_equal(t, cand):
                seen.add(name)
    assert seen == {"id", "fB", "fA", "rot"}


def test_faf_target_and_mask_aligned(dataset: Path) -> None:
    params = AugmentParams(p_scale=0.7, p_brightness=0, p_contrast=0, p_noise=0)
    n_fg = 0
    with make_train_loader(dataset, CASES, config(4), mode="FAF", seed=2, epoch=3, num_workers=0,
                           params=params) as loader:
        for b in iterate_batches(loader, 12):
            dm, t, m = depth_mean(b), b["target"][:, 0], b["mask"][:, 0] > 0
            assert t.min() >= 0 and t.max() <= 0.8 + 1e-6  # inverted FAF: 1 - (1 - 0.8 blob)
            for n in range(4):
                # both linear: target = 0.8 w and depth-mean = 1 + w on fully valid pixels
                assert iou((dm[n] > 1.5) & m[n], (t[n] > 0.4) & m[n]) > 0.99
                np.testing.assert_allclose(dm[n][m[n]], 1 + t[n][m[n]] / 0.8, atol=1e-4)
                assert iou(dm[n] > 0.5, m[n]) > 0.95
                n_fg += int((t[n] > 0.4).any())
            check_depth_bands(b)
    assert n_fg > 10
    # invert=False gives the FAF image itself
    with make_train_loader(dataset, CASES, config(2), mode="FAF", invert=False, seed=2, epoch=3, num_workers=0,
                           augment=False) as loader:
        b = next(loader)
    m = b["mask"] > 0
    assert b["target"][m].min() >= 0.2 - 1e-6 and np.isclose(b["target"][m].max(), 1.0)


def test_everything_on_stays_aligned(dataset: Path) -> None:
    """All augmentations at probability 1 (scaling, flips, shift, contrast, noise): the label still
    matches the depth-mean thresholded half-way between the fore- and background levels."""
    params = AugmentParams(p_scale=1.0, p_brightness=1.0, p_contrast=1.0, p_noise=1.0, noise_variance=(0.0, 0.2))
    with make_train_loader(dataset, CASES, config(4), seed=3, epoch=0, num_workers=0, params=params) as loader:
        for b in iterate_batches(loader, 8):
            dm = depth_mean(b)
            lab, m = b["target"][:, 0] > 0.5, b["mask"][:, 0] > 0
            for n in range(4):
                if lab[n].sum() < 5 or (~lab[n] & m[n]).sum() < 5:
                    continue
                thr = (np.median(dm[n][lab[n]]) + np.median(dm[n][~lab[n] & m[n]])) / 2
                assert iou((dm[n] > thr) & m[n], lab[n] & m[n]) > 0.9
            assert set(np.unique(b["target"])) <= {0.0, 1.0}  # intensity never touches the target


def test_intensity_only_changes_the_volume(dataset: Path) -> None:
    params = AugmentParams(p_scale=0.0, mirror_axes=(), p_brightness=1.0, p_contrast=1.0, p_noise=1.0)
    plain = get_train_transforms(PATCH, "FAF", params, intensity=False)
    noisy = get_train_transforms(PATCH, "FAF", params)
    loader = EnfaceDataLoader(dataset / "depth16", CASES, PATCH, 2, mode="FAF")
    a, b = plain(**loader.make_batch(0)), noisy(**loader.make_batch(0))
    np.testing.assert_array_equal(a["target"], b["target"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.allclose(a["data"], b["data"])


def test_foreground_oversampling_share(tmp_path: Path) -> None:
    d = tmp_path / "depth16"
    d.mkdir()
    vol = np.zeros((1, 64, DEPTH, 128), np.float32)
    seg = np.zeros((64, 128), np.uint8)
    seg[60:63, 3:6] = 1  # a tiny lesion in a corner
    save_npy(vol, d / "big.npy"), save_npy(seg, d / "big_seg.npy")
    save_json({"class_locations": {"1": np.argwhere(seg).tolist()}}, d / "big.json")
    save_npy(vol, d / "empty.npy"), save_npy(np.zeros_like(seg), d / "empty_seg.npy")

    def share(p: float, cases: list[str]) -> float:
        loader = EnfaceDataLoader(d, cases, PATCH, 4, oversample_foreground=p, seed=4)
        hits = [(loader.make_batch(i)["target"].reshape(4, -1).max(axis=1) > 0) for i in range(100)]
        return float(np.mean(hits))

    assert share(1.0, ["big"]) == 1.0
    assert share(0.0, ["big"]) < 0.15
    assert 0.25 < share(0.33, ["big"]) < 0.5
    assert share(1.0, ["empty"]) == 0.0  # no foreground: falls back to random crops
    # class_locations computed from the label when CASE.json lacks them
    (d / "big.json").unlink()
    assert share(1.0, ["big"]) == 1.0


def test_determinism_per_seed_and_epoch(dataset: Path) -> None:
    def take(epoch: int, workers: int, seed: int = 11) -> list[dict]:
        with make_train_loader(dataset, CASES, config(2), seed=seed, epoch=epoch, num_workers=workers) as loader:
            return list(iterate_batches(loader, 5))

    a, b = take(0, 2), take(0, 2)
    assert [x["batch_index"] for x in a] == [0, 1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        for k in ("data", "target", "mask"):
            np.testing.assert_array_equal(x[k], y[k])
    # the sequence does not depend on the number of workers (0 = in-process)
    for x, y in zip(a, take(0, 0)):
        np.testing.assert_array_equal(x["data"], y["data"])
    # another epoch or seed gives other batches
    assert not all(np.array_equal(x["data"], y["data"]) for x, y in zip(a, take(1, 2)))
    assert not all(np.array_equal(x["data"], y["data"]) for x, y in zip(a, take(0, 0, seed=12)))
    # the global numpy generator is neither used nor disturbed
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    c = take(0, 0)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(a[0]["data"], c[0]["data"])
    assert batch_rngs(1, 2, 3)[0].random() == batch_rngs(1, 2, 3)[0].random()


def test_finite_loader_and_clean_shutdown(dataset: Path) -> None:
    with make_train_loader(dataset, CASES, config(2), seed=0, epoch=0, num_workers=2, num_batches=5) as loader:
        got = [b["batch_index"] for b in loader]
    assert got == [0, 1, 2, 3, 4]
    loader = make_train_loader(dataset, CASES, config(2), seed=0, epoch=0, num_workers=2)
    next(loader)
    t = time.time()
    loader.close()
    loader.close()  # idempotent
    assert time.time() - t < 10
    assert all(not p.is_alive() for p in getattr(loader._aug, "_processes", []))
    with pytest.raises(StopIteration):
        next(loader)


def test_worker_error_is_reported(dataset: Path, tmp_path: Path) -> None:
    d = tmp_path / "copy" / "depth16"
    d.mkdir(parents=True)
    write_case(d, "a", seed=0)
    write_case(d, "b", seed=1)
    loader = make_train_loader(d, ["a", "b"], config(2), seed=0, epoch=0, num_workers=1)
    (d / "b.npy").write_bytes(b"not an npy file")  # broken after the check, before the worker reads it
    with pytest.raises(FPNError, match="b.npy"):
        for _ in range(20):
            next(loader)
    loader.close()


class _Exploding:
    def __call__(self, **d: object) -> dict:
        raise ValueError("boom in a transform")


def test_transform_error_carries_worker_traceback(dataset: Path, capfd: pytest.CaptureFixture) -> None:
    from fpnunet.training.augment import SeededCompose
    from fpnunet.training.loader import TrainLoader

    loader = EnfaceDataLoader(dataset / "depth16", CASES, PATCH, 2)
    with TrainLoader(loader, SeededCompose([_Exploding()]), num_workers=1) as it:
        with pytest.raises(RuntimeError, match="boom in a transform") as info:
            next(it)
    assert "Traceback" in str(info.value) and "ValueError" in str(info.value)
    assert "boom in a transform" in capfd.readouterr().err  # logged in the worker too


def test_case_checks(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = dataset / "depth16"
    (d / "c2_FAF.npy").unlink()
    with caplog.at_level(logging.WARNING):
        loader = EnfaceDataLoader(d, CASES, PATCH, 2, mode="FAF")
    assert "c2" not in loader.case_names and len(loader.case_names) == 3
    assert "left out" in caplog.text and "c2" in caplog.text
    with pytest.raises(FPNError, match="SLO"):
        EnfaceDataLoader(d, CASES, PATCH, 2, mode="SLO")
    (d / "c1_seg.npy").unlink()
    with pytest.raises(FPNError, match="c1_seg.npy"):
        EnfaceDataLoader(d, CASES, PATCH, 2, mode="seg")
    with pytest.raises(FPNError, match="nope.npy"):
        EnfaceDataLoader(d, ["nope"], PATCH, 2)
    bad = Configuration(patch_size=PATCH, batch_size=2, depth=128, data_identifier="depth16")
    with pytest.raises(FPNError, match="depth 16"):
        make_train_loader(dataset, ["c0"], bad, seed=0, epoch=0, num_workers=0)


def test_default_num_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FPN_N_PROC_DA", "3")
    assert default_num_workers() == 3
    monkeypatch.setenv("FPN_N_PROC_DA", "0")
    assert default_num_workers() == 0
    monkeypatch.setenv("FPN_N_PROC_DA", "many")
    with pytest.raises(FPNError, match="FPN_N_PROC_DA"):
        default_num_workers()
    monkeypatch.delenv("FPN_N_PROC_DA")
    assert 1 <= default_num_workers() <= 12
