"""Preprocessing: normalisation, depth reduction, the on-disk layout, idempotence, atomicity, CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from raw_dataset import BAND, SHAPE, SPACING, make_label, make_raw_dataset, make_volume

from fpnunet.errors import FPNError
from fpnunet.io import write_image
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.preprocessing.depth import crop_depth, linear_resample_matrix, resample_depth
from fpnunet.preprocessing.normalization import normalize
from fpnunet.preprocessing.preprocess import preprocess_volume
from fpnunet.preprocessing.storage import preprocess_dataset

PROPS_KEYS = {"case", "labelled", "enface", "raw_shape", "shape_bda", "spacing_bda", "geometry", "retina_band",
              "crop", "class_locations", "signature"}


def make_plan(depth: int = 16, depth_crop: int = 20, channels: int = 1, axis: int = 1, **kw) -> Plan:
    return Plan(
        dataset_name="Dataset901_Tiny", projection_axis=axis, num_input_channels=channels,
        labels={"background": 0, "GA": 1}, enface_modalities=["FAF"], depth_crop=depth_crop,
        configurations={"fpn": Configuration(depth=depth, data_identifier=f"depth{depth}")}, **kw,
    )


@pytest.fixture
def env(data_roots: tuple[Path, Path]) -> tuple[Path, Path]:
    return data_roots


# ----------------------------------------------------------------------------- normalisation
def test_zscore_retina_statistics():
    v = make_volume()
    out = normalize(v, BAND, "zscore_retina")
    assert out.dtype == np.float32 and out.shape == v.shape
    band = out[:, BAND[0] : BAND[1]]
    assert abs(float(band.mean())) < 1e-4 and float(band.std()) == pytest.approx(1.0, abs=1e-4)
    assert float(out[:, :10].mean()) < -2  # the vitreous is far below the retina's mean


def test_zscore_bscan_statistics():
    v = make_volume()
    v[2] *= 3.0  # one brighter B-scan: normalised on its own
    out = normalize(v, BAND, "zscore_bscan")
    per = out.reshape(out.shape[0], -1)
    np.testing.assert_allclose(per.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(per.std(axis=1), 1.0, atol=1e-4)


def test_clipping_tames_outliers():
    v = make_volume()
    v[0, 20, 0] = 1e6  # a saturated pixel
    rest = np.ones(v.shape, bool)
    rest[0, 20, 0] = False
    rest[:, : BAND[0]] = rest[:, BAND[1] :] = False
    out = normalize(v, BAND, "zscore_retina")
    assert float(out.max()) < 10 and float(out[rest].std()) > 0.9  # the retina keeps its contrast
    unclipped = normalize(v, BAND, "zscore_retina", clip_percentiles=None)
    assert float(unclipped[rest].std()) < 0.2  # one outlier flattened every other voxel


def test_unknown_normalization():
    with pytest.raises(FPNError, match="unknown normalization 'minmax'"):
        normalize(make_volume(), BAND, "minmax")


# ----------------------------------------------------------------------------- depth
def test_crop_depth_pads_past_the_volume():
    v = np.arange(4 * 10 * 3, dtype=np.float32).reshape(4, 10, 3)
    out = crop_depth(v, (-2, 12), pad_value=-7.0)
    assert out.shape == (4, 14, 3)
    np.testing.assert_array_equal(out[:, 2:12], v)
    assert (out[:, :2] == -7).all() and (out[:, 12:] == -7).all()


@pytest.mark.parametrize("n_in,n_out", [(20, 16), (16, 20), (496, 128), (7, 7)])
def test_linear_resampling(n_in, n_out):
    w = linear_resample_matrix(n_in, n_out)
    assert w.shape == (n_out, n_in)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    ramp = np.arange(n_in, dtype=np.float32)
    expected = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5  # pixel-centre coordinates
    inner = slice(n_out // 8 + 1, n_out - n_out // 8 - 1)  # away from the renormalised borders
    # exact for interpolation; the widened (anti-aliasing) kernel is off by < 0.05 of a row
    np.testing.assert_allclose((w @ ramp)[inner], expected[inner], atol=1e-3 if n_out >= n_in else 0.05)
    v = np.full((2, n_in, 3), 5.0, np.float32)
    np.testing.assert_allclose(resample_depth(v, n_out), 5.0, atol=1e-5)


def test_preprocess_volume_keeps_the_retina():
    plan = make_plan(depth=16, depth_crop=20)
    out, meta = preprocess_volume([make_volume()], plan, plan.configuration())
    assert out.shape == (1, SHAPE[0], 16, SHAPE[2]) and out.dtype == np.float32
    top, bottom = meta["retina_band"]
    assert abs(top - BAND[0]) <= 1 and abs(bottom - BAND[1]) <= 1
    start, stop = meta["crop"]
    assert stop - start == 20 and start <= top and stop >= bottom
    prof = out[0].mean(axis=(0, 2))
    r0 = int(np.ceil((top - start) * 16 / 20)) + 1
    r1 = int((bottom - start) * 16 / 20) - 1
    assert prof[r0:r1].min() > -0.5 and prof[:2].max() < -2 and prof[-2:].max() < -2


def test_preprocess_volume_pads_with_background():
    plan = make_plan(depth=60, depth_crop=60)  # taller than the 40-row volume: 10 rows padded each side
    out, meta = preprocess_volume([make_volume()], plan, plan.configuration())
    assert meta["crop"] == [-10, 50]
    prof = out[0].mean(axis=(0, 2))
    # padded rows carry the normalised background, like the vitreous rows next to them
    assert prof[:10] == pytest.approx(prof[12:20].mean(), abs=0.3)


def test_preprocess_volume_multichannel_and_errors():
    plan = make_plan(channels=2, depth_crop=0)
    out, meta = preprocess_volume([make_volume(), 2 * make_volume(seed=3)], plan, plan.configuration())
    assert out.shape == (2, SHAPE[0], 16, SHAPE[2]) and meta["crop"] == [0, SHAPE[1]]
    with pytest.raises(FPNError, match="expects 2 channel"):
        preprocess_volume([make_volume()], plan, plan.configuration())
    with pytest.raises(FPNError, match="one shape"):
        preprocess_volume([make_volume(), make_volume((4, 32, 16))], plan, plan.configuration())
    bad = make_volume()
    bad[0, 0, 0] = np.nan
    with pytest.raises(FPNError, match="NaN"):
        preprocess_volume([bad, bad], plan, plan.configuration())


# ----------------------------------------------------------------------------- dataset
def _outputs(folder: Path) -> dict[str, float]:
    # the completion record is rewritten by every run, last
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir()) if p.name != "preprocessing_complete.json"}


def test_preprocess_dataset_layout(env):
    raw, pre = env
    make_raw_dataset(raw, n=3, labelled=(0, 1), enface_shape=(32, 32))  # FAF on another grid
    plan = make_plan()
    summary = preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    folder = pre / "Dataset901_Tiny" / "depth16"
    assert summary["depth16"]["written"] == 3 and summary["depth16"]["skipped"] == 0
    names = {p.name for p in folder.iterdir()}
    assert names == {f"case_00{i}{s}" for i in range(3) for s in (".npy", ".json", "_FAF.npy")} | {
        "case_000_seg.npy", "case_001_seg.npy", "preprocessing_complete.json"}
    data = np.load(folder / "case_000.npy")
    assert data.shape == (1, SHAPE[0], 16, SHAPE[2]) and data.dtype == np.float32
    seg = np.load(folder / "case_000_seg.npy")
    assert seg.dtype == np.uint8 and seg.shape == (SHAPE[0], SHAPE[2])
    np.testing.assert_array_equal(seg, make_label())
    faf = np.load(folder / "case_000_FAF.npy")
    assert faf.dtype == np.float32 and faf.shape == (SHAPE[0], SHAPE[2])  # resampled from 32 x 32
    assert faf.min() >= 0.0 and faf.max() <= 1.0 and faf.max() > 0.9
    props = json.loads((folder / "case_000.json").read_text())
    assert set(props) == PROPS_KEYS
    assert props["case"] == "case_000" and props["labelled"] and props["enface"] == ["FAF"]
    assert props["raw_shape"] == list(SHAPE) and props["shape_bda"] == list(SHAPE)
    assert props["spacing_bda"] == pytest.approx(list(SPACING), rel=1e-5)
    assert props["geometry"]["shape"] == [SHAPE[0], SHAPE[2]]
    assert props["geometry"]["spacing"] == pytest.approx([SPACING[0], SPACING[2]], rel=1e-5)
    assert props["crop"][1] - props["crop"][0] == 20
    locs = np.array(props["class_locations"]["1"])
    assert len(locs) == 16 and (seg[locs[:, 0], locs[:, 1]] == 1).all()
    unlabelled = json.loads((folder / "case_002.json").read_text())
    assert not unlabelled["labelled"] and unlabelled["class_locations"] == {}


def test_class_locations_are_capped_and_seeded(env):
    raw, pre = env
    ds = make_raw_dataset(raw, n=1, labelled=(0,), shape=(40, 40, 64), band=(15, 25), enface=())
    lab = np.ones((40, 64), np.uint8)
    write_image(ds / "labelsTr" / "case_000.nii.gz", lab, (1.0, 1.0))
    preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    p = pre / "Dataset901_Tiny" / "depth16" / "case_000.json"
    first = json.loads(p.read_text())["class_locations"]["1"]
    assert len(first) == 1000 and len({tuple(x) for x in first}) == 1000
    preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False, clean=True)
    assert json.loads(p.read_text())["class_locations"]["1"] == first


def test_depth_on_another_axis(env):
    raw, pre = env
    make_raw_dataset(raw, n=2, labelled=(0,), axis=2)
    preprocess_dataset("901", make_plan(axis=2), num_processes=1, show_progress=False)
    folder = pre / "Dataset901_Tiny" / "depth16"
    assert np.load(folder / "case_000.npy").shape == (1, SHAPE[0], 16, SHAPE[2])
    np.testing.assert_array_equal(np.load(folder / "case_000_seg.npy"), make_label())
    props = json.loads((folder / "case_000.json").read_text())
    assert props["raw_shape"] == [SHAPE[0], SHAPE[2], SHAPE[1]] and props["shape_bda"] == list(SHAPE)


def test_rerun_skips_clean_redoes_and_changes_redo(env):
    raw, pre = env
    ds = make_raw_dataset(raw, n=3, labelled=(0, 1))
    plan = make_plan()
    preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    folder = pre / "Dataset901_Tiny" / "depth16"
    before = _outputs(folder)
    s = preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    assert s["depth16"] == {**s["depth16"], "written": 0, "skipped": 3}
    assert _outputs(folder) == before  # nothing rewritten
    # a label added to case_002: only that case is redone (and gains its _seg.npy)
    write_image(ds / "labelsTr" / "case_002.nii.gz", make_label(), (1.0, 1.0))
    s = preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    assert (s["depth16"]["written"], s["depth16"]["skipped"]) == (1, 2)
    after = _outputs(folder)
    assert after["case_000.npy"] == before["case_000.npy"] and after["case_002.npy"] != before["case_002.npy"]
    assert "case_002_seg.npy" in after
    # a case removed from the raw dataset disappears from the preprocessed folder
    (ds / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (ds / "labelsTr" / "case_001.nii.gz").unlink()
    (ds / "enfaceTr" / "case_001_FAF.nii.gz").unlink()
    preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    assert not any(p.name.startswith("case_001") for p in folder.iterdir())
    # --clean redoes everything
    mid = _outputs(folder)
    s = preprocess_dataset("901", plan, num_processes=1, show_progress=False, clean=True)
    assert s["depth16"]["written"] == 2
    assert all(_outputs(folder)[k] != mid[k] for k in mid)


def test_atomic_writes_and_interrupted_run(env, monkeypatch):
    import fpnunet.preprocessed_dataset as pp  # the case files are written by their owner

    raw, pre = env
    make_raw_dataset(raw, n=2, labelled=(0, 1))
    folder = pre / "Dataset901_Tiny" / "depth16"
    folder.mkdir(parents=True)
    (folder / ".case_000.npy.abc123.npy").write_bytes(b"half")  # left by a killed run

    def failing_save_json(obj, path, indent=2):
        raise OSError(28, "No space left on device")

    original = pp.save_json
    monkeypatch.setattr(pp, "save_json", failing_save_json)
    with pytest.raises(FPNError, match="case_000: cannot write"):
        preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    assert not (folder / "case_000.json").exists()  # no finished marker for a half-done case
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(pp, "save_json", original)
    s = preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    assert s["depth16"]["written"] == 2
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_parallel_matches_serial(env):
    raw, pre = env
    make_raw_dataset(raw, n=4, labelled=(0, 1))
    preprocess_dataset("901", make_plan(), num_processes=1, show_progress=False)
    folder = pre / "Dataset901_Tiny" / "depth16"
    serial = {p.name: np.load(p) for p in folder.glob("*.npy")}
    s = preprocess_dataset("901", make_plan(), num_processes=2, show_progress=False, clean=True)
    assert s["depth16"]["written"] == 4
    for name, arr in serial.items():
        np.testing.assert_array_equal(np.load(folder / name), arr)


def test_two_identifiers_in_one_pass(env):
    raw, pre = env
    make_raw_dataset(raw, n=2, labelled=(0,))
    plan = make_plan()
    plan.configurations["wide"] = Configuration(depth=24, data_identifier="depth24")
    s = preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    assert s["depth16"]["written"] == 2 and s["depth24"]["written"] == 2
    assert np.load(pre / "Dataset901_Tiny" / "depth24" / "case_000.npy").shape[2] == 24
    plan.configurations["clash"] = Configuration(depth=32, data_identifier="depth16")
    with pytest.raises(FPNError, match="share data_identifier 'depth16'"):
        preprocess_dataset("901", plan, num_processes=1, show_progress=False)
    del plan.configurations["clash"]
    plan.configurations["wide"].data_identifier = ""  # would otherwise tidy/clean the dataset folder itself
    with pytest.raises(FPNError, match="plain folder name"):
        preprocess_dataset("901", plan, num_processes=1, show_progress=False, clean=True)
    assert (pre / "Dataset901_Tiny" / "depth16" / "case_000.json").is_file()


# ----------------------------------------------------------------------------- CLI
def test_cli_end_to_end(env, capsys, monkeypatch):
    import fpnunet.plans.planner as planner
    from fpnunet.commands.plan_and_preprocess import main
    from fpnunet.plans.plan import Plan as PlanCls

    raw, pre = env
    make_raw_dataset(raw, n=3, labelled=(0, 1), num_test=1)
    assert main(["-d", "901", "-np", "1", "--no-progress"]) == 0
    out = pre / "Dataset901_Tiny"
    assert json.loads((out / "dataset.json").read_text()) == json.loads(
        (raw / "Dataset901_Tiny" / "dataset.json").read_text())
    fp = json.loads((out / "dataset_fingerprint.json").read_text())
    assert fp["num_cases"] == 3 and fp["num_test"] == 1 and fp["projection_axis"] == 1
    plan = PlanCls.load(out / "plans.json")
    for config in plan.configurations.values():
        folder = out / config.data_identifier
        assert sorted(p.name for p in folder.glob("*.json")) == ["case_000.json", "case_001.json", "case_002.json",
                                                                 "preprocessing_complete.json"]
        data = np.load(folder / "case_000.npy")
        assert data.shape == (1, SHAPE[0], config.depth, SHAPE[2])
    printed = capsys.readouterr().out
    assert "3 case(s) written" in printed
    umask = os.umask(0)
    os.umask(umask)
    for p in (out / "plans.json", out / "dataset_fingerprint.json", out / plan.configuration().data_identifier
              / "case_000.npy"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # atomic writes keep the usual file mode
    # a re-run (the same plan, without the planner's few seconds) skips every finished case
    calls = []

    def same_plan(fingerprint, info, *, existing=None, **kw):
        calls.append(existing)
        return existing

    monkeypatch.setattr(planner, "plan_dataset", same_plan)
    assert main(["-d", "Dataset901_Tiny", "-np", "1", "--no-progress"]) == 0
    assert "0 case(s) written, 3 up to date" in capsys.readouterr().out
    assert len(calls) == 1 and calls[0] is not None  # the existing plan was handed to the planner
