"""Issue 30 items 2-4: merged parts cover the inputs exactly, one writer per prediction folder, and
fpn_report reads a prediction folder by the same rule as fpn_evaluate."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
from test_predict import _run, _volume_file
from test_predict_parts import inputs  # noqa: F401  (the fixture: a one-fold model and three volumes)

from fpnunet.atomic import save_json
from fpnunet.commands.report import main as report_main
from fpnunet.io import write_image


def _part(in_dir, model_dir, out, i, k=2):
    return _run(["-i", str(in_dir), "-m", str(model_dir), "--device", "cpu", "--disable-tta", "-o", str(out),
                 "--num-parts", str(k), "--part-id", str(i)])


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _lock(path, pid: int) -> None:
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "now",
                                "command": "fpn_predict -o x"}))


def test_merge_refuses_parts_made_from_different_inputs(inputs, capsys):  # noqa: F811
    tmp, model_dir, in_dir = inputs
    out = tmp / "out"
    assert _part(in_dir, model_dir, out, 0) == 0
    _volume_file(in_dir / "caseD_0000.nii.gz", shape=(6, 24, 20), seed=9)  # a volume added between the parts
    assert _part(in_dir, model_dir, out, 1) == 0
    capsys.readouterr()
    assert _run(["-o", str(out), "--merge-parts"]) == 1
    err = capsys.readouterr().err
    assert "part 1 of 2 saw 4 input case(s), part 0 saw 3" in err and "rerun every part" in err
    assert not (out / "lesion_areas.csv").exists()
    assert _part(in_dir, model_dir, out, 0) == 0  # rerunning the stale part makes the merge whole
    assert _run(["-o", str(out), "--merge-parts"]) == 0
    table = (out / "lesion_areas.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in table[1:]] == ["caseA", "caseB", "caseC", "caseD"]
    assert not list(out.glob("cases.part-*")) and not list(out.glob("lesion_areas.part-*"))


def test_merge_refuses_a_copied_row_and_a_row_of_another_part(inputs, capsys):  # noqa: F811
    tmp, model_dir, in_dir = inputs
    out = tmp / "out"
    assert _part(in_dir, model_dir, out, 0) == 0 and _part(in_dir, model_dir, out, 1) == 0
    part1 = out / "lesion_areas.part-1-of-2.csv"
    good = part1.read_text()
    lines = good.splitlines()
    part1.write_text("\n".join([*lines, lines[1]]) + "\n")  # caseB's row twice
    capsys.readouterr()
    assert _run(["-o", str(out), "--merge-parts"]) == 1
    assert "case caseB class GA appears twice" in capsys.readouterr().err
    part1.write_text(good.replace("caseB", "caseA"))  # part 1 claims part 0's case
    assert _run(["-o", str(out), "--merge-parts"]) == 1
    assert "case caseA is not one of part 1's cases" in capsys.readouterr().err
    part1.write_text(lines[0] + "\n")  # caseB neither predicted nor failed
    assert _run(["-o", str(out), "--merge-parts"]) == 1
    assert "case caseB of part 1 has neither a row nor a failed-case entry" in capsys.readouterr().err
    (out / "cases.part-0-of-2.json").unlink()  # a part of an older fpnunet: no case list
    part1.write_text(good)
    assert _run(["-o", str(out), "--merge-parts"]) == 1
    assert "part 0 of 2 has no case list" in capsys.readouterr().err
    assert not (out / "lesion_areas.csv").exists()


def test_one_writer_per_prediction_folder(inputs, capsys):  # noqa: F811
    tmp, model_dir, in_dir = inputs
    out = tmp / "out"
    out.mkdir()
    common = ["-i", str(in_dir), "-m", str(model_dir), "--device", "cpu", "--disable-tta", "-o", str(out)]
    other = _sleeper()
    try:
        _lock(out / ".fpn_predict_lock", other.pid)  # another fpn_predict writes here
        assert _run(common) == 1
        err = capsys.readouterr().err
        assert f"in use by another run (PID {other.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [".fpn_predict_lock"]  # nothing written
        assert _part(in_dir, model_dir, out, 1) == 1  # a part neither
        assert f"being written by another fpn_predict (PID {other.pid}" in capsys.readouterr().err
        (out / ".fpn_predict_lock").unlink()
        _lock(out / ".fpn_predict_lock.part-0-of-2", other.pid)  # part 0 of 2 running
        assert _part(in_dir, model_dir, out, 1) == 0  # the other part of that split writes beside it
        assert _run(common) == 1  # a whole run or a merge does not
        assert _run(["-o", str(out), "--merge-parts"]) == 1
        assert "being written by another fpn_predict" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    # the writer died (kill -9): its lock is taken over
    assert _part(in_dir, model_dir, out, 0) == 0
    assert _run(["-o", str(out), "--merge-parts"]) == 0
    assert _run(common) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_report_refuses_a_label_the_dataset_does_not_have(tmp_path, capsys, monkeypatch):
    """Item 4: a mask labelled 7 is refused by fpn_report (as by fpn_evaluate), never shown as area 0."""
    pred = tmp_path / "pred"
    pred.mkdir()
    mask = np.zeros((8, 10), np.uint8)
    mask[2:5, 3:6] = 7
    write_image(pred / "case1.nii.gz", mask, (0.05, 0.01))
    write_image(pred / "case2.nii.gz", np.zeros((8, 10), np.uint8), (0.05, 0.01))
    raw = tmp_path / "raw" / "Dataset950_T"
    raw.mkdir(parents=True)
    monkeypatch.setenv("FPN_RAW", str(raw.parent))
    save_json({"name": "T", "channel_names": {"0": "OCT"}, "labels": {"background": 0, "GA": 1},
               "file_ending": ".nii.gz", "numTraining": 0}, raw / "dataset.json")
    try:
        code = report_main(["-p", str(pred), "-d", "950", "-r", str(pred)])
    except SystemExit as exc:
        code = int(exc.code)
    err = capsys.readouterr().err
    assert code == 1 and "case1.nii.gz: label value 7 is not one of the dataset's labels" in err
    assert not (pred / "report.html").exists()
