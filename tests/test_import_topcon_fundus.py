"""fpn_import: the Topcon fundus image placed on the en-face grid by the file's registration box
(FDA @REGIST_INFO, FDS @REGIST_SCAN_02), written as the SLO en-face image; implausible boxes refused
with their reason in the report, the volume imported without SLO."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from device_exports import PATIENT, make_truth, write_topcon
from import_runs import report, run

from fpnunet.importer.topcon_place import box_positions, box_problem
from fpnunet.io import read_image
from fpnunet.raw_dataset import enface_name

FUNDUS_RC = (40, 60)
BOX = (10, 5, 41, 26)  # x0, y0, x1, y1: 31 px for the 32 A-scans, 21 px = 3 px per step for the 8 B-scans
SIZE_MM = (6.2, 4.2)  # width along the A-scans, height along the B-scans: the box's shape


@pytest.fixture(scope="module")
def truth():
    return make_truth(0)


def _fundus() -> np.ndarray:
    """A pattern that tells every pixel apart (row and column), uint8 as the devices store it."""
    r, c = np.mgrid[: FUNDUS_RC[0], : FUNDUS_RC[1]]
    return ((7 * r + 3 * c) % 251).astype(np.uint8)


def test_fundus_inside_the_box_lands_on_the_right_en_face_pixels(tmp_path, truth, capsys):
    assert truth.volume_u8.shape[0] == 8 and truth.volume_u8.shape[2] == 32
    inp, fundus = tmp_path / "in", _fundus()
    write_topcon(inp / "a.fda", truth.volume_u8, kind="FDA", eye=0, fundus=fundus, box=BOX, size_mm=SIZE_MM)
    write_topcon(inp / "b.fds", truth.volume_u8, kind="FDS", eye=1, fundus=fundus, box=BOX, size_mm=SIZE_MM,
                 patient_id="PID0815Y")
    out = run(tmp_path, inp, "--mirror-os")
    rows = {r["format"]: r for r in report(out)}
    x0, y0 = BOX[:2]
    # en-face pixel (b, a) is fundus pixel (row y0 + 3 b, column x0 + a): B-scan 0 on the box's top edge
    want = fundus[y0:y0 + 22:3, x0:x0 + 32].astype(np.float32)
    assert want.shape == (8, 32)
    for fmt, chunk, flip in (("topcon-fda", "@REGIST_INFO", False), ("topcon-fds", "@REGIST_SCAN_02", True)):
        row = rows[fmt]
        assert row["slo"] == "written", row["slo"]
        assert f"placed by the {chunk} box (10, 5)-(41, 26) fundus px" in row["slo_from"]
        slo = read_image(out / "enfaceTr" / enface_name(row["case"], "SLO", ".nii.gz"))
        np.testing.assert_allclose(slo.array, want[:, ::-1] if flip else want, atol=1e-3)  # OS: mirrored
        np.testing.assert_allclose(slo.spacing, (4.2 / 8, 6.2 / 32))
    ds = json.loads((out / "dataset.json").read_text())
    assert "SLO" in ds["enface_modalities"]
    # privacy: no header value in any written byte, file name or printed line
    printed = capsys.readouterr()
    secrets = (PATIENT["id"], PATIENT["last"], PATIENT["first"], PATIENT["serial"], "PID0815Y", "1950-01-02")
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(tmp_path))
        data = p.read_bytes() if p.is_file() else b""
        data = gzip.decompress(data) if p.name.endswith(".gz") else data
        for s in secrets:
            assert s not in rel and s.encode() not in data and s not in printed.out + printed.err, (s, p)


REFUSED = {
    "missing": (None, "the file has no @REGIST_INFO chunk"),
    "outside": ((10, 5, 70, 45), "the registration box (10, 5)-(70, 45) lies outside the 60 x 40 fundus image"),
    "zero": ((10, 5, 10, 26), "the registration box (10, 5)-(10, 26) has zero or negative size"),
    "inverted": ((41, 5, 10, 26), "box (41, 5)-(10, 26) has zero or negative size"),
    "flat": ((10, 5, 41, 8), "is 31 x 3 fundus pixels, not the shape of the 6.2 x 4.2 mm scan"),
    "tiny": ((10, 5, 13, 7), "would make the 60 x 40 fundus image 124 mm wide (more than 30 mm)"),
}


def test_implausible_boxes_are_refused_with_their_reason_and_the_volume_imported_without_slo(tmp_path, truth):
    inp, fundus = tmp_path / "in", _fundus()
    for i, (name, (box, _)) in enumerate(REFUSED.items()):
        write_topcon(inp / f"{name}.fda", truth.volume_u8, fundus=fundus, box=box, size_mm=SIZE_MM,
                     patient_id=f"P{i}")
    out = run(tmp_path, inp)
    rows = report(out)
    assert len(rows) == len(REFUSED) and all(r["shape_bda"] == "8x64x32" for r in rows)
    reasons = sorted(r["slo"] for r in rows)
    for _, why in REFUSED.values():
        (hit,) = [r for r in reasons if why in r]
        assert hit.startswith("not written: the fundus image was read, but not placed: ")
    assert all(r["slo_from"] == "" for r in rows)
    assert not (out / "enfaceTr").exists() or not list((out / "enfaceTr").iterdir())


def test_box_checks_and_positions():
    assert box_problem(BOX, FUNDUS_RC, SIZE_MM[::-1]) == ""
    assert "outside" in box_problem((0, 0, 60, 26), FUNDUS_RC, SIZE_MM[::-1])  # x1 = cols: one past the edge
    pos = box_positions(BOX, 8)
    assert pos.shape == (8, 2, 2)
    np.testing.assert_allclose(pos[0], [[10, 5], [41, 5]])
    np.testing.assert_allclose(pos[-1], [[10, 26], [41, 26]])
    np.testing.assert_allclose(np.diff(pos[:, 0, 1]), 3.0)


def test_plan_counts_the_placed_topcon_fundus(tmp_path, monkeypatch, capsys):
    from fpnunet.commands.plan_and_preprocess import main as preprocess_main

    monkeypatch.setenv("FPN_RAW", str(tmp_path / "raw"))
    for i, box in enumerate([BOX, (10, 5, 70, 45)]):  # the second box lies outside the fundus
        write_topcon(tmp_path / "in" / f"s{i}.fda", make_truth(60 + i).volume_u8, fundus=_fundus(), box=box,
                     size_mm=SIZE_MM, patient_id=f"R{i}")
    run(tmp_path, tmp_path / "in", name="Dataset958_Topcon")
    capsys.readouterr()
    assert preprocess_main(["-d", "958", "--verify-only", "--no-progress"]) == 0
    assert "en-face images: SLO 1 of 2 cases" in capsys.readouterr().out
