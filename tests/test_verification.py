"""Dataset verification: one clear line per problem, naming the file; the CLI writes nothing for a broken dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from raw_dataset import SHAPE, SPACING, make_label, make_raw_dataset, make_volume

from fpnunet.errors import DatasetError
from fpnunet.io import write_image
from fpnunet.plans.fingerprint import verify_and_fingerprint


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(DatasetError) as info:
        verify_and_fingerprint(folder, show_progress=False)
    return info.value.problems


def one_problem(folder: Path, *needles: str) -> str:
    """Exactly one problem is reported and it contains every needle."""
    probs = problems_of(folder)
    assert len(probs) == 1, probs
    for n in needles:
        assert n in probs[0], (n, probs[0])
    return probs[0]


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_raw_dataset(tmp_path)


# ----------------------------------------------------------------------------- dataset.json and layout
def test_missing_dataset_json(ds: Path):
    (ds / "dataset.json").unlink()
    one_problem(ds, "dataset.json", "missing")


def test_dataset_json_missing_key(ds: Path):
    d = json.loads((ds / "dataset.json").read_text())
    del d["labels"]
    (ds / "dataset.json").write_text(json.dumps(d))
    one_problem(ds, "dataset.json", "'labels' is missing")


def test_dataset_json_not_json(ds: Path):
    (ds / "dataset.json").write_text("{name: oops")
    one_problem(ds, "dataset.json", "not valid JSON")


def test_missing_images_folder(ds: Path):
    shutil.rmtree(ds / "imagesTr")
    probs = problems_of(ds)
    assert any("imagesTr/" in p and "folder is missing" in p for p in probs)


def test_empty_images_folder(ds: Path):
    for p in (ds / "imagesTr").iterdir():
        p.unlink()
    probs = problems_of(ds)
    assert any("imagesTr/" in p and "no volumes found" in p for p in probs), probs


def test_label_without_volume(ds: Path):
    write_image(ds / "labelsTr" / "ghost.nii.gz", make_label(), (1.0, 1.0))
    one_problem(ds, "labelsTr/ghost.nii.gz", "has no volume", "imagesTr/ghost_0000.nii.gz")


def test_enface_without_volume(ds: Path):
    write_image(ds / "enfaceTr" / "ghost_FAF.nii.gz", make_label().astype(np.float32), (1.0, 1.0))
    one_problem(ds, "enfaceTr/ghost_FAF.nii.gz", "has no volume")


def test_enface_unknown_modality(ds: Path):
    write_image(ds / "enfaceTr" / "case_000_OCTA.nii.gz", make_label().astype(np.float32), (1.0, 1.0))
    one_problem(ds, "enfaceTr/case_000_OCTA.nii.gz", "enface_modalities")


def test_not_an_image_in_labels(ds: Path):
    (ds / "labelsTr" / "notes.txt").write_text("GA cases")
    one_problem(ds, "labelsTr/notes.txt", "not an image file")


def test_missing_channel(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, channels=2)
    (ds / "imagesTr" / "case_001_0001.nii.gz").unlink()
    one_problem(ds, "imagesTr/case_001_0001.nii.gz", "missing channel 1", "case_001")


def test_extra_channel(ds: Path):
    write_image(ds / "imagesTr" / "case_000_0001.nii.gz", make_volume(), SPACING)
    one_problem(ds, "imagesTr/case_000_0001.nii.gz", "channel 1", "only 1 channel")


def test_file_without_channel_suffix(ds: Path):
    write_image(ds / "imagesTr" / "case_009.nii.gz", make_volume(), SPACING)
    one_problem(ds, "imagesTr/case_009.nii.gz", "channel suffix")


def test_file_with_wrong_ending(ds: Path):
    write_image(ds / "imagesTr" / "case_009_0000.mha", make_volume(), SPACING)
    one_problem(ds, "imagesTr/case_009_0000.mha", "file_ending")


def test_channel_names_keys(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, channel_names={"1": "OCT"})
    probs = problems_of(ds)
    assert any("channel_names" in p and "dataset.json" in p for p in probs), probs


def test_label_values_beyond_uint8(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, labels={"background": 0, "GA": 1, "drusen": 300})
    one_problem(ds, "dataset.json", "0..255", "drusen")


# ----------------------------------------------------------------------------- file content
def test_unreadable_file(ds: Path):
    (ds / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"\x1f\x8b not really a nifti")
    one_problem(ds, "imagesTr/case_001_0000.nii.gz", "cannot read")


def test_truncated_volume(ds: Path):
    p = ds / "imagesTr" / "case_001_0000.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    probs = problems_of(ds)
    assert len(probs) == 1 and "imagesTr/case_001_0000.nii.gz" in probs[0], probs


def test_volume_not_3d(ds: Path):
    write_image(ds / "imagesTr" / "case_001_0000.nii.gz", make_label().astype(np.float32), (1.0, 1.0))
    one_problem(ds, "imagesTr/case_001_0000.nii.gz", "must be 3D", "en-face image?")


def test_volume_4d_singleton_is_fine(tmp_path: Path):
    import SimpleITK as sitk

    ds = make_raw_dataset(tmp_path, labelled=(0,))
    img = sitk.GetImageFromArray(make_volume()[None], isVector=False)  # (t=1, B, D, A)
    img.SetSpacing(tuple(reversed((1.0,) + SPACING)))
    sitk.WriteImage(img, str(ds / "imagesTr" / "case_000_0000.nii.gz"))
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["cases"]["case_000"]["shape"] == list(SHAPE)
    assert fp["cases"]["case_000"]["spacing"] == pytest.approx(list(SPACING), rel=1e-5)


def test_nan_in_volume(ds: Path):
    v = make_volume()
    v[0, 20, 3] = np.nan
    v[1, 20, 3] = np.inf
    write_image(ds / "imagesTr" / "case_002_0000.nii.gz", v, SPACING)
    one_problem(ds, "imagesTr/case_002_0000.nii.gz", "2 NaN/Inf")


def test_constant_volume(ds: Path):
    write_image(ds / "imagesTr" / "case_002_0000.nii.gz", np.zeros(SHAPE, np.uint8), SPACING)
    one_problem(ds, "imagesTr/case_002_0000.nii.gz", "constant")


def test_channels_with_different_shapes(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, channels=2)
    write_image(ds / "imagesTr" / "case_001_0001.nii.gz", make_volume((4, 32, 16)), SPACING)
    one_problem(ds, "case_001", "channels have different shapes", "case_001_0001.nii.gz")


def test_label_not_2d(ds: Path):
    write_image(ds / "labelsTr" / "case_001.nii.gz", np.zeros((2, 4, 16), np.uint8), (1.0, 1.0, 1.0))
    one_problem(ds, "labelsTr/case_001.nii.gz", "label must be 2D")


def test_label_with_singleton_axis_is_fine(ds: Path):
    write_image(ds / "labelsTr" / "case_001.nii.gz", make_label()[None], (1.0, 1.0, 1.0))
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["cases"]["case_001"]["labelled"]


def test_label_shape_mismatch(ds: Path):
    write_image(ds / "labelsTr" / "case_001.nii.gz", np.zeros((5, 16), np.uint8), (1.0, 1.0))
    one_problem(ds, "labelsTr/case_001.nii.gz", "(5, 16)", "matches no en-face plane")


def test_label_transposed(ds: Path):
    write_image(ds / "labelsTr" / "case_001.nii.gz", make_label().T.copy(), (1.0, 1.0))
    one_problem(ds, "labelsTr/case_001.nii.gz", "transposed")


def test_label_value_not_in_labels(ds: Path):
    lab = make_label()
    lab[0, 0] = 3
    write_image(ds / "labelsTr" / "case_001.nii.gz", lab, (1.0, 1.0))
    one_problem(ds, "labelsTr/case_001.nii.gz", "label values 3", "dataset.json labels")


def test_label_negative_value(ds: Path):
    lab = make_label().astype(np.int16)
    lab[0, 0] = -1
    write_image(ds / "labelsTr" / "case_001.nii.gz", lab, (1.0, 1.0))
    one_problem(ds, "labelsTr/case_001.nii.gz", "label values -1")


def test_label_non_integer(ds: Path):
    lab = make_label().astype(np.float32) * 0.5
    write_image(ds / "labelsTr" / "case_001.nii.gz", lab, (1.0, 1.0))
    one_problem(ds, "labelsTr/case_001.nii.gz", "must be integers", "0.5")


def test_label_rgb(tmp_path: Path):
    import SimpleITK as sitk

    ds = make_raw_dataset(tmp_path, ending=".nii.gz")
    rgb = sitk.GetImageFromArray(np.stack([make_label() * 255] * 3, axis=-1), isVector=True)
    sitk.WriteImage(rgb, str(ds / "labelsTr" / "case_001.png"))
    (ds / "labelsTr" / "case_001.nii.gz").unlink()
    one_problem(ds, "labelsTr/case_001.png", "colour components")


def test_enface_not_2d(ds: Path):
    write_image(ds / "enfaceTr" / "case_001_FAF.nii.gz", np.ones((3, 4, 16), np.float32), (1.0, 1.0, 1.0))
    one_problem(ds, "enfaceTr/case_001_FAF.nii.gz", "en-face image (FAF) must be 2D")


def test_nan_in_enface(ds: Path):
    img = np.ones((4, 16), np.float32)
    img[0, 0] = np.nan
    write_image(ds / "enfaceTr" / "case_001_FAF.nii.gz", img, (1.0, 1.0))
    one_problem(ds, "enfaceTr/case_001_FAF.nii.gz", "NaN/Inf")


# ----------------------------------------------------------------------------- projection axis
def test_projection_axis_inconsistent(ds: Path):
    # case_001 stored with depth on axis 0: its label fits axis 0, the others axis 1
    write_image(ds / "imagesTr" / "case_001_0000.nii.gz", make_volume(axis=0), SPACING)
    write_image(ds / "imagesTr" / "case_002_0000.nii.gz", make_volume(axis=0), SPACING)
    write_image(ds / "imagesTr" / "case_000_0000.nii.gz", make_volume(axis=1), SPACING)
    write_image(ds / "imagesTr" / "case_003_0000.nii.gz", make_volume(axis=1), SPACING)
    write_image(ds / "labelsTr" / "case_003.nii.gz", make_label(), (1.0, 1.0))
    for p in (ds / "enfaceTr").iterdir():
        p.unlink()
    # labelled: case_000 (axis 1), case_001 (axis 0), case_003 (axis 1): case_001 is the odd one
    one_problem(ds, "case_001", "projection axis inconsistent", "axis 0")


def test_projection_axis_explicit_mismatch(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, projection_axis=0, enface=())
    probs = problems_of(ds)
    assert len(probs) == 2, probs  # both labelled cases
    assert all("dataset.json sets projection_axis 0" in p for p in probs)
    assert any("labelsTr/case_000.nii.gz" in p for p in probs)


def test_projection_axis_undeterminable(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, labelled=(), enface=())
    one_problem(ds, "projection_axis", "cannot tell")


def test_projection_axis_ambiguous_volumes(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, shape=(16, 16, 16), band=(5, 10), enface=())
    one_problem(ds, "projection_axis")


def test_projection_axis_explicit_resolves_ambiguity(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, shape=(16, 16, 16), band=(5, 10), enface=(), projection_axis=1)
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["projection_axis"] == 1


def test_projection_axis_from_enface_and_consensus(tmp_path: Path):
    # no labels: the en-face images (on the volume's grid) identify the axis
    ds = make_raw_dataset(tmp_path, labelled=(), axis=2)
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["projection_axis"] == 2
    assert fp["cases"]["case_000"]["shape"] == list(SHAPE)
    # an unlabelled case without en-face images follows the consensus
    for p in (ds / "enfaceTr").glob("case_002_*"):
        p.unlink()
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["cases"]["case_002"]["shape"] == list(SHAPE) and fp["cases"]["case_002"]["enface"] == []


def test_enface_on_other_grid_is_fine(tmp_path: Path):
    ds = make_raw_dataset(tmp_path, enface_shape=(64, 64))
    fp = verify_and_fingerprint(ds, show_progress=False)
    assert fp["cases"]["case_000"]["enface"] == ["FAF"]


def test_many_problems_reported_together(ds: Path):
    write_image(ds / "labelsTr" / "ghost.nii.gz", make_label(), (1.0, 1.0))
    (ds / "imagesTr" / "case_001_0000.nii.gz").write_bytes(b"junk")
    v = make_volume()
    v[0, 0, 0] = np.nan
    write_image(ds / "imagesTr" / "case_002_0000.nii.gz", v, SPACING)
    probs = problems_of(ds)
    assert len(probs) == 3, probs
    joined = "\n".join(probs)
    for needle in ("ghost", "case_001_0000", "case_002_0000"):
        assert needle in joined
    with pytest.raises(DatasetError, match=r"\(3 problems\)"):
        verify_and_fingerprint(ds, show_progress=False)


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("breakage", ["nan", "label_value", "ghost"])
def test_cli_broken_dataset_exits_nonzero_and_writes_nothing(data_roots, capsys, breakage):
    from fpnunet.commands.plan_and_preprocess import main

    raw, pre = data_roots
    ds = make_raw_dataset(raw)
    if breakage == "nan":
        v = make_volume()
        v[0, 0, 0] = np.nan
        write_image(ds / "imagesTr" / "case_002_0000.nii.gz", v, SPACING)
        needle = "imagesTr/case_002_0000.nii.gz: volume has 1 NaN/Inf"
    elif breakage == "label_value":
        write_image(ds / "labelsTr" / "case_000.nii.gz", make_label() * 7, (1.0, 1.0))
        needle = "labelsTr/case_000.nii.gz: label values 7"
    else:
        write_image(ds / "labelsTr" / "ghost.nii.gz", make_label(), (1.0, 1.0))
        needle = "labelsTr/ghost.nii.gz"
    with pytest.raises(SystemExit) as exc:
        main(["-d", "901", "-np", "1", "--no-progress"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
    assert not pre.exists() or not any(pre.rglob("*"))


def test_cli_verify_only_writes_nothing(data_roots, capsys):
    from fpnunet.commands.plan_and_preprocess import main

    raw, pre = data_roots
    make_raw_dataset(raw, n=3, labelled=(0, 1))
    assert main(["-d", "901", "--verify-only", "-np", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 training cases (2 labelled, 1 unlabelled)" in out
    assert "4 x 40 x 16" in out and "axis of the raw volumes: 1" in out
    assert not pre.exists()

