"""fpn_predict --num-parts/--part-id, --merge-parts and --devices: the parts' union is one run's output."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from test_predict import _make_model_folder, _run, _volume_file

from fpnunet.calibration_file import Calibration, write_calibration
from fpnunet.errors import FPNError
from fpnunet.inference.parts import merge_parts, part_commands, select_part, strip_devices


@pytest.fixture()
def inputs(tmp_path):
    model_dir = _make_model_folder(tmp_path / "results", folds=1)
    # the parts' file lists below assume no case is flagged (no uncertainty/ vote maps): pin the flag
    # (an untrained model's scores are arbitrary; a score never exceeds 1)
    write_calibration(model_dir, Calibration(qc_threshold=1.0))
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for i, case in enumerate(("caseA", "caseB", "caseC")):
        _volume_file(in_dir / f"{case}_0000.nii.gz", shape=(6 + i, 24, 20), seed=i)
    return tmp_path, model_dir, in_dir


def test_union_of_two_parts_is_the_single_run_bitwise(inputs, capsys):
    tmp, model_dir, in_dir = inputs
    common = ["-i", str(in_dir), "-m", str(model_dir), "--device", "cpu", "--save-probabilities"]
    assert _run([*common, "-o", str(tmp / "single")]) == 0
    parts = tmp / "parts"
    assert _run([*common, "-o", str(parts), "--num-parts", "2", "--part-id", "1"]) == 0
    assert sorted(p.name for p in parts.iterdir()) == ["caseB.nii.gz", "caseB.npz", "cases.part-1-of-2.json",
                                                      "lesion_areas.part-1-of-2.csv"]
    with pytest.raises(FPNError, match=r"part\(s\) 0 of 2 have no lesion_areas table"):
        merge_parts(parts)
    assert _run([*common, "-o", str(parts), "--num-parts", "2", "--part-id", "0"]) == 0
    assert "part 0 of 2" in capsys.readouterr().err
    assert _run(["-o", str(parts), "--merge-parts"]) == 0
    single = sorted(p.name for p in (tmp / "single").iterdir())
    assert single == sorted(p.name for p in parts.iterdir())
    assert "lesion_areas.csv" in single and "caseC.nii.gz" in single
    for name in single:  # masks and the lesion table byte for byte; probabilities array for array (a zip
        if name.endswith(".npz"):  # stores its members' write times)
            with np.load(tmp / "single" / name) as a, np.load(parts / name) as b:
                assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name
        else:
            assert (tmp / "single" / name).read_bytes() == (parts / name).read_bytes(), name


def test_part_selection_and_flags(inputs, capsys):
    assert select_part(list("abcde"), 2, 0) == ["a", "c", "e"] and select_part(list("abcde"), 2, 1) == ["b", "d"]
    assert sorted(select_part(list("abcde"), 3, 0) + select_part(list("abcde"), 3, 1)
                  + select_part(list("abcde"), 3, 2)) == list("abcde")
    tmp, model_dir, in_dir = inputs
    assert _run(["-i", str(in_dir), "-o", str(tmp / "o"), "-m", str(model_dir), "--num-parts", "2",
                 "--part-id", "2"]) == 1
    assert "--part-id 2: must be in 0..1" in capsys.readouterr().err
    assert _run(["-i", str(in_dir), "-o", str(tmp / "o"), "-m", str(model_dir), "--devices", "cpu", "cpu",
                 "--num-parts", "2"]) == 1
    assert "one part per device" in capsys.readouterr().err
    assert not (tmp / "o").exists()
    assert _run(["-o", str(tmp), "--merge-parts"]) == 1
    assert "no part tables" in capsys.readouterr().err

    argv = ["-i", "in", "--devices", "cuda:0", "cuda:1", "-o", "out", "--disable-tta"]
    assert strip_devices(argv) == ["-i", "in", "-o", "out", "--disable-tta"]
    assert part_commands(argv, ["cuda:0", "cuda:1"])[1] == [
        sys.executable, "-m", "fpnunet.commands.predict", "-i", "in", "-o", "out", "--disable-tta", "--num-parts", "2",
        "--part-id", "1", "--device", "cuda:1"]
