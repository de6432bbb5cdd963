"""fpn_import on real device exports published as test data by other projects (../shared/realdata,
see its PROVENANCE.md; never copied into the project): the exact outcome for each file and a privacy
check of everything written and printed against the values in the file's own header."""
from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from import_runs import report, run

from fpnunet.errors import FPNError

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not (REAL / "PROVENANCE.md").is_file(),
                                reason=f"real device exports not found at {REAL} (../shared/realdata beside the "
                                       "project; CI has them)")
FDA, FDS = REAL / "panimg" / "fda_minimized.fda", REAL / "panimg" / "fds_minimized.fds"
VOL = REAL / "heyeximport" / "valid.vol"
# the name a clinic export may carry: it must never be printed or written
PATIENT_NAME = "Doe_John_19380731"


def _vol_secrets() -> list[str]:
    from eyepy.io.he.vol_reader import HeVolReader

    p = HeVolReader(VOL).parsed_file
    dob = str(p.dob)[:10]
    out = [str(p.pid), dob, dob.replace("-", ""), ".".join(reversed(dob.split("-")))]
    assert int(p.pid) > 0 and dob[:2] in ("19", "20")  # the real header does carry an id and a birth date
    return out + ([str(p.patient_id).strip("\x00 ")] if str(p.patient_id).strip("\x00 ") else [])


def _topcon_header(path: Path) -> dict[str, str]:
    from fpnunet.importer.topcon import chunks

    _, ch = chunks(path)
    pat, hw = ch[b"@PATIENT_INFO_02"][0], ch[b"@HW_INFO_03"][0]
    return {"id": pat[:32].rstrip(b"\0").decode(), "last": pat[64:96].rstrip(b"\0").decode(),
            "serial": hw[16:32].rstrip(b"\0").decode(), "dob": "-".join(map(str, struct.unpack_from("<HHH", pat, 105)))}


def _copy_as_patient(tmp: Path, src: Path) -> Path:
    """The real file under a clinic-style patient file name (in the test's temporary folder)."""
    dst = tmp / "in" / f"{PATIENT_NAME}{src.suffix}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _refusal(tmp: Path, src: Path) -> str:
    inp = _copy_as_patient(tmp, src)
    with pytest.raises(FPNError) as err:
        run(tmp, inp.parent)
    text = str(err.value)
    assert "nothing was written" in text and not (tmp / "raw" / "Dataset950_Imp").exists()
    assert PATIENT_NAME not in text and "Doe" not in text and "19380731" not in text
    rows = (tmp / "secret" / "Dataset950_Imp.sources.csv").read_text().splitlines()
    assert rows[1].endswith(f",,{inp.name}")  # the key holder can trace the printed token
    assert rows[1].split(",")[0] in text
    return text.splitlines()[-1]


@pytest.mark.parametrize("name, why", [
    ("heyeximport/valid.vol", "a circular scan (scan pattern 2); only raster volumes"),
    ("heyeximport/invalid.vol", "not a readable HEYEX VOL file ("),
    ("panimg/e2e_minimized.E2E", "no OCT volume of two or more B-scans in this E2E file (0 series)"),
    ("panimg/fda_minimized.fda", "1 B-scan(s) of 512 A-scans is no volume (need at least 2 B-scans)"),
    ("panimg/corrupt.fds", "not a Topcon file (no FOCT header)"),
])
def test_real_files_that_are_refused_say_why_in_one_line_without_the_file_name(tmp_path, capsys, name, why):
    line = _refusal(tmp_path, REAL / name)
    assert line.startswith("  - src-") and line.endswith(why) or why in line, line
    printed = capsys.readouterr()
    assert PATIENT_NAME not in printed.out + printed.err
    if name.endswith("valid.vol"):
        for s in _vol_secrets():
            assert s not in line and s not in printed.out + printed.err, s


def test_real_fda_b_scan_decodes_as_other_readers_decode_it():
    """The real FDA is refused (one B-scan), but its JPEG 2000 B-scan and fundus decode as OCT-Converter
    0.7.0 and panimg 0.18.2 decode them (650 x 512 uint8, mean 27.0313 measured with both)."""
    from fpnunet.importer import topcon

    kind, ch = topcon.chunks(FDA)
    assert kind == b"FDA"
    c = ch[b"@IMG_JPEG"][0]
    (size,) = struct.unpack_from("<i", c, 25)
    bscan = topcon._jpeg2000(FDA, c[29:29 + size], "B-scan")
    assert bscan.shape == (650, 512) and bscan.dtype == np.uint8
    assert float(bscan.mean()) == pytest.approx(27.03128605769231, abs=1e-9)
    assert topcon._fundus(FDA, kind, ch).shape == (3, 2)


def test_real_topcon_registration_boxes_are_read_and_refused_on_the_cut_fundus():
    """Both real files carry a registration box; the fundus images were cut to 2 x 3, so it is refused."""
    from fpnunet.importer import topcon
    from fpnunet.importer.topcon_place import box_problem, read_box

    for path, box in ((FDA, (686, 438, 1379, 1132)), (FDS, (242, 132, 455, 345))):
        kind, ch = topcon.chunks(path)
        assert read_box(kind, ch) == (box, "")
        # a 6 x 6 mm scan: the box is square; on the fundus as cut it lies outside
        assert box_problem(box, (3, 2), (6.0, 6.0)).endswith("lies outside the 2 x 3 fundus image")
    assert box_problem((686, 438, 1379, 1132), (1536, 2048), (6.0, 6.0)) == ""  # a 2048 x 1536 fundus: placed


def test_real_fds_imports_with_its_shape_spacing_eye_and_nothing_identifying(tmp_path, capsys):
    secrets = _topcon_header(FDS)
    assert secrets["serial"] == "203040"  # the published file carries a device serial
    inp = _copy_as_patient(tmp_path, FDS)
    out = run(tmp_path, inp.parent)
    printed = capsys.readouterr()
    (row,) = report(out)
    assert row["format"] == "topcon-fds" and row["shape_bda"] == "4x3x2" and row["laterality"] == "OS"
    assert [float(v) for v in row["spacing_bda_mm"].split()] == pytest.approx([1.5, 0.0035, 3.0])
    assert row["bscan_distance_from"].startswith("header @PARAM_SCAN") and row["visit_date"] == "2010-07-09"
    # the real @REGIST_SCAN_02 box (on the uncut fundus) lies outside the fundus the publishers cut to 2 x 3
    assert row["slo"] == ("not written: the fundus image was read, but not placed: the registration box "
                          "(242, 132)-(455, 345) lies outside the 2 x 3 fundus image") and row["slo_from"] == ""
    ds = json.loads((out / "dataset.json").read_text())
    (case,) = ds["visits"]
    assert ds["visits"][case]["eye"] == "OS" and ds["patients"][case].startswith("P")
    assert not ds["patients"][case].startswith("Punknown")  # the FDA/FDS patient id is read (pseudonymised)
    # privacy: the serial (and the file's patient name) in no written byte, file name or printed line;
    # the patient id and last name are "1", too short to grep: no written value may equal them
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(tmp_path))
        assert secrets["serial"] not in rel and PATIENT_NAME not in rel
        if p.is_file():
            data = p.read_bytes()
            data = gzip.decompress(data) if p.name.endswith(".gz") else data
            assert secrets["serial"].encode() not in data and PATIENT_NAME.encode() not in data, p
    assert secrets["serial"] not in printed.out + printed.err and PATIENT_NAME not in printed.out + printed.err
    assert secrets["id"] not in set(ds["patients"].values()) | set(ds["patients"]) | {row["case"], row["source"]}


def test_all_real_files_together_with_skip_bad(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted((REAL / "panimg").iterdir()) + sorted((REAL / "heyeximport").iterdir()):
        if p.suffix.lower() in (".vol", ".e2e", ".fda", ".fds"):
            shutil.copyfile(p, inp / f"{PATIENT_NAME}_{p.parent.name}_{p.name}")
    out = run(tmp_path, inp, "--skip-bad")
    printed = capsys.readouterr()
    rows = report(out)
    assert [r["format"] for r in rows if r["case"]] == ["topcon-fds"]
    skipped = [r for r in rows if not r["case"]]
    assert len(skipped) == 5 and all(r["source"].startswith("src-") and r["notes"].startswith("skipped: ")
                                     for r in skipped)
    assert "1 file(s) skipped" not in printed.out and "5 file(s) skipped" in printed.out
    text = (out / "import_report.csv").read_text() + printed.out + printed.err
    assert PATIENT_NAME not in text and "Doe" not in text
    for s in _vol_secrets():
        assert s not in text, s
    sources = (tmp_path / "secret" / "Dataset950_Imp.sources.csv").read_text().splitlines()
    assert len(sources) == 1 + 6 and all(PATIENT_NAME in r for r in sources[1:])
