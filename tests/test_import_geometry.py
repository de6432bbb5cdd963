"""fpn_import's geometry: HEYEX VOL, HEYEX XML + PNG and DICOM OPT + OP exports written by the tests.

Every export holds a known localizer (the synthetic SLO placed at known B-scan positions), so the
registered SLO must equal the synthetic one; shapes, spacing, laterality, mirroring, labels on
either grid and registered en-face images are checked on the written files (the dataset-level
behaviour, privacy and errors: tests/test_import.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from device_exports import COL0, ROW0, S_A, STEP, make_faf, make_truth, write_dicom, write_vol, write_xml
from import_runs import report, run

from fpnunet.errors import FPNError
from fpnunet.importer.cli import import_exports as main
from fpnunet.io import read_image


@pytest.fixture(scope="module")
def truth():
    return make_truth(0)


@pytest.mark.parametrize("fmt", ["vol", "xml", "dicom"])
def test_geometry_and_registered_slo_match_the_truth(tmp_path, truth, fmt):
    inp = tmp_path / "in"
    inp.mkdir()
    if fmt == "vol":
        write_vol(inp / "scan.vol", truth, laterality="OD")
    elif fmt == "xml":
        write_xml(inp / "x", truth, laterality="R")
    else:
        write_dicom(inp / "d", truth, laterality="R")
    out = run(tmp_path, inp)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "OCT"} and ds["projection_axis"] == 1 and ds["enface_modalities"] == ["SLO"]
    (case,) = ds["visits"]
    assert ds["visits"][case] == {"patient": ds["patients"][case], "eye": "OD", "date": "2021-05-06",
                                  "mirrored": False, "split": "Tr"}
    vol = read_image(out / "imagesTr" / f"{case}_0000.nii.gz")
    assert vol.array.shape == truth.volume_u8.shape  # (B, D, A)
    np.testing.assert_array_equal(vol.array, truth.volume_u8)
    np.testing.assert_allclose(vol.spacing, truth.spacing, rtol=1e-6)  # numpy order (sB, sD, sA) mm
    import SimpleITK as sitk

    img = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
    assert img.GetSize() == (32, 64, 8)  # SimpleITK (A, D, B)
    np.testing.assert_allclose(img.GetSpacing(), (S_A, 0.0039, 2 * S_A), rtol=1e-6)
    slo = read_image(out / "enfaceTr" / f"{case}_SLO.nii.gz")
    assert slo.array.shape == (8, 32)
    np.testing.assert_allclose(slo.array, truth.slo_u8, atol=1e-3)  # B-scan 0 at the bottom of the localizer
    np.testing.assert_allclose(slo.spacing, (2 * S_A, S_A), rtol=1e-6)
    (row,) = report(out)
    assert row["case"] == case and row["slo"] == "written" and row["shape_bda"] == "8x64x32"
    assert row["format"] == {"vol": "heyex-vol", "xml": "heyex-xml", "dicom": "dicom-opt"}[fmt]
    assert row["reader"].startswith("pydicom 3" if fmt == "dicom" else "eyepy 0.21")
    assert [float(v) for v in row["spacing_bda_mm"].split()] == pytest.approx(truth.spacing, rel=1e-5)


def test_os_scans_are_mirrored_only_when_asked_and_it_is_recorded(tmp_path):
    t = make_truth(1, right_eye=False)
    inp = tmp_path / "in"
    write_xml(inp / "x", t, laterality="L")
    plain = run(tmp_path, inp, name="Dataset951_Plain")
    mirrored = run(tmp_path, inp, "--mirror-os", name="Dataset952_Mirror")
    for out, flip in ((plain, False), (mirrored, True)):
        ds = json.loads((out / "dataset.json").read_text())
        (case,) = ds["visits"]
        assert "_OS_" in case and ds["visits"][case]["eye"] == "OS" and ds["visits"][case]["mirrored"] is flip
        assert ds["import"]["mirror_os"] is flip and report(out)[0]["mirrored"] == str(flip).lower()
        vol = read_image(out / "imagesTr" / f"{case}_0000.nii.gz").array
        slo = read_image(out / "enfaceTr" / f"{case}_SLO.nii.gz").array
        np.testing.assert_array_equal(vol, t.volume_u8[..., ::-1] if flip else t.volume_u8)
        np.testing.assert_allclose(slo, t.slo_u8[:, ::-1] if flip else t.slo_u8, atol=1e-3)
    with pytest.raises(FPNError, match="--mirror-os"):  # an append must make the same choice
        main(["-i", str(inp), "-o", str(mirrored), "--append", "--key", str(tmp_path / "secret" / "import.key")])


def test_positions_outside_the_localizer_write_no_slo_and_say_why(tmp_path):
    t = make_truth(2, offset=(30.0, 0.0))  # shifted 30 pixels right: past the 44-pixel localizer
    write_vol(tmp_path / "in" / "a.vol", t)
    out = run(tmp_path, tmp_path / "in")
    (row,) = report(out)
    assert row["slo"].startswith("not written: B-scan positions fall outside the localizer")
    assert not (out / "enfaceTr").exists() or not list((out / "enfaceTr").iterdir())
    assert len(list((out / "imagesTr").iterdir())) == 1


def test_labels_on_the_localizer_or_the_enface_grid(tmp_path, truth):
    inp, labels = tmp_path / "in", tmp_path / "labels"
    inp.mkdir()
    labels.mkdir()
    write_vol(inp / "onloc.vol", truth)
    write_vol(inp / "onenface.vol", make_truth(3))
    import imageio.v3 as iio

    big = np.zeros(truth.localizer.shape, np.uint8)  # the label drawn on the localizer, 0/255
    for b in range(8):
        big[5 + (7 - b) * 2, 4:36] = truth.label[b] * 255
    iio.imwrite(labels / "onloc.png", big)
    t3 = make_truth(3)
    iio.imwrite(labels / "onenface.png", t3.label)
    out = run(tmp_path, inp, "--labels", str(labels))
    rows = {r["source"]: r for r in report(out)}
    assert all(r["label"] == "written" for r in rows.values())
    got = {p.name: read_image(p).array for p in (out / "labelsTr").iterdir()}
    assert len(got) == 2
    arrays = sorted(got.values(), key=lambda a: int(np.abs(a.astype(int) - truth.label).sum()))
    np.testing.assert_array_equal(arrays[0], truth.label)
    np.testing.assert_array_equal(arrays[1], t3.label)
    # a transposed label is an error naming the file
    iio.imwrite(labels / "onenface.png", t3.label.T.copy())
    with pytest.raises(FPNError, match=r"label file src-\w{10}: label shape \(32, 8\) matches neither .*transposed"):
        run(tmp_path, inp, "--labels", str(labels), name="Dataset951_T")  # file names print as tokens
    assert str(labels / "onenface.png") in (tmp_path / "secret" / "Dataset951_T.sources.csv").read_text()


def test_enface_images_are_registered_onto_the_slo_with_a_check_picture(tmp_path):
    import imageio.v3 as iio
    import SimpleITK as sitk

    t = make_truth(5, loc_shape=(96, 96), texture=2.0)
    inp, faf_dir = tmp_path / "in", tmp_path / "faf"
    write_vol(inp / "eye.vol", t)
    faf, moved = make_faf(t)
    faf_dir.mkdir()
    iio.imwrite(faf_dir / "eye.png", faf)  # matched by the export's file name
    out = run(tmp_path, inp, "--enface", f"FAF={faf_dir}")
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["enface_modalities"] == ["SLO", "FAF"]
    (row,) = report(out)
    assert row["FAF_status"] == "registered" and float(row["FAF_metric"]) < -0.3
    (case,) = ds["visits"]
    got = read_image(out / "enfaceTr" / f"{case}_FAF.nii.gz").array
    # the truth: the FAF sampled where each en-face pixel lies on it (the known map's inverse)
    inv = moved.GetInverse()
    want = np.zeros_like(got)
    faf_img = sitk.GetImageFromArray(faf.astype(np.float32))
    for b in range(8):
        for a in range(32):
            q = inv.TransformPoint((COL0 + a, ROW0 + (7 - b) * STEP))
            want[b, a] = faf_img.EvaluateAtContinuousIndex(q)
    assert np.abs(got - want).mean() < 6.0 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.97
    picture = out / "import_checks" / f"{case}_FAF.png"
    assert iio.imread(picture).shape[1] > 600
    # a DICOM FAF is matched by patient id, eye and visit date (its file name says nothing)
    (faf_dir / "eye.png").unlink()
    dcm = dataclasses.replace(t, localizer=faf)
    write_dicom(faf_dir, dcm, laterality="R", stem="faf0001", opt_too=False)
    write_dicom(faf_dir, dcm, laterality="L", stem="faf0002", opt_too=False)  # the other eye: no match
    out2 = run(tmp_path, inp, "--enface", f"FAF={faf_dir}", name="Dataset951_Dicom")
    (row,) = report(out2)
    assert row["FAF_status"] == "registered"
    (case2,) = json.loads((out2 / "dataset.json").read_text())["visits"]
    got2 = read_image(out2 / "enfaceTr" / f"{case2}_FAF.nii.gz").array
    assert np.corrcoef(got2.ravel(), want.ravel())[0, 1] > 0.97


def test_geometry_refuses_unequal_spacing_and_missing_positions_give_no_slo(truth):
    from fpnunet.importer.geometry import raster_geometry
    from fpnunet.importer.localizer import register_localizer
    from fpnunet.importer.scan import Scan

    def scan(pos):
        return Scan(Path("x.vol"), "heyex-vol", "test", truth.volume_u8, (None, 0.0039, S_A), positions=pos,
                    localizer=truth.localizer, localizer_spacing=(S_A, S_A))

    uneven = truth.positions.copy()
    uneven[4:, :, 1] -= 0.3 * STEP * S_A  # the last four B-scans 30 % closer
    with pytest.raises(FPNError, match=r"^x.vol: B-scans are not equally spaced"):
        raster_geometry(scan(uneven))
    longer = truth.positions.copy()
    longer[2, 1, 0] += 5 * S_A
    with pytest.raises(FPNError, match=r"^x.vol: B-scans have different lengths"):
        raster_geometry(scan(longer))
    with pytest.raises(FPNError, match="B-scan distance is neither in the header nor derivable"):
        raster_geometry(scan(None))
    ok = raster_geometry(scan(truth.positions))
    assert ok.spacing == pytest.approx(truth.spacing) and ok.notes == ["B-scan distance from the B-scan positions"]
    assert register_localizer(scan(None), None, (8, 32)) == (None, "no B-scan positions in the header")


def test_degree_positions_as_eyepy_gives_them_for_e2e_go_through_the_same_path(truth):
    """No valid E2E file can be written here; this checks the shared EyeVolume path with E2E-like
    metadata (pixel scale unit, positions and localizer scale in degrees, origin at the centre)."""
    import eyepy as ep

    from fpnunet.importer.geometry import raster_geometry
    from fpnunet.importer.heyex import scan_from_eyevolume
    from fpnunet.importer.localizer import register_localizer

    deg = 30 / truth.localizer.shape[1]  # eyepy: 30 degrees over the localizer's width, per pixel both ways
    pos_deg = truth.positions / S_A * deg - 15  # localizer pixels -> degrees from the centre
    bm = [ep.EyeBscanMeta(start_pos=tuple(p[0]), end_pos=tuple(p[1]), pos_unit="°", scale_y=0.0039) for p in pos_deg]
    meta = ep.EyeVolumeMeta(scale_z=1, scale_x=1, scale_y=1, scale_unit="px", bscan_meta=bm, laterality="OD")
    loc = ep.EyeEnface(truth.localizer, ep.EyeEnfaceMeta(scale_x=deg, scale_y=deg, scale_unit="°"))
    ev = ep.EyeVolume(truth.volume_u8, meta=meta, localizer=loc)
    scan = scan_from_eyevolume(ev, Path("x.e2e"), "heyex-e2e", "eyepy", "PID", [], mm_per_degree=0.288)
    raster = raster_geometry(scan)
    step_deg, length_deg = STEP * deg, 31 * deg
    assert raster.spacing == pytest.approx((step_deg * 0.288, 0.0039, length_deg * 0.288 / 31))
    assert any("degree" in n or "°" in n for n in raster.notes)
    slo, why = register_localizer(scan, raster.affine, (8, 32))
    assert why == "" and np.abs(slo - truth.slo_u8).max() < 1e-3
