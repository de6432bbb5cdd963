"""Issue 30, second pass: a full disk or a read-only target names the output that failed
(not a temporary file's name, not torch's "unexpected pos ..." alone) in fpn_predict, fpn_evaluate
and fpn_train. Tests run as root, where permissions are ignored, so the failing writes are
simulated: mkstemp refused (read-only folder), the write raising ENOSPC without a file name."""
from __future__ import annotations

import errno
import os

import pytest
import SimpleITK as sitk
import torch
from test_training import dataset, fold_dir  # noqa: F401  (dataset is a fixture)
from test_trust_errors import _model_folder, _one_input, label_folders
from test_trust_flags import BASE, SHORT

import fpnunet.atomic
from fpnunet.atomic import save_json
from fpnunet.commands.evaluate import main as evaluate_main
from fpnunet.commands.predict import main as predict_main
from fpnunet.commands.train import main as train_main


def failure(capsys, call) -> str:
    with pytest.raises(SystemExit):
        call()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() on a full disk: no file name


def _read_only(*args, prefix="", dir=None, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, prefix + "x7k2"))


def test_atomic_writes_name_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    monkeypatch.setattr(fpnunet.atomic.json, "dump", _disk_full)
    with pytest.raises(OSError) as exc:
        save_json({"a": 1}, target)
    assert exc.value.filename == str(target) and exc.value.errno == errno.ENOSPC
    monkeypatch.setattr(fpnunet.atomic.tempfile, "mkstemp", _read_only)
    with pytest.raises(PermissionError) as exc:
        save_json({"a": 1}, target)
    assert exc.value.filename == str(target)
    assert not list(tmp_path.iterdir())


def test_evaluate_disk_full_names_the_summary(tmp_path, capsys, monkeypatch):
    ref, pred = label_folders(tmp_path, 1, 1)
    out = tmp_path / "summary.json"
    monkeypatch.setattr(fpnunet.atomic.json, "dump", _disk_full)
    err = failure(capsys, lambda: evaluate_main(["-r", str(ref), "-p", str(pred), "-o", str(out)]))
    assert f"{out}: No space left on device" in err, err


def test_predict_names_the_mask_it_could_not_write(dataset, tmp_path, capsys, monkeypatch):  # noqa: F811
    model = _model_folder(dataset, tmp_path)
    _one_input(tmp_path / "in")
    out = tmp_path / "out"

    def full(image, name, *args, **kwargs):  # SimpleITK's own wording names the file it was given
        raise RuntimeError(f"Exception thrown in SimpleITK WriteImage: itk::ERROR: NiftiImageIO: "
                           f"Could not write {name}: No space left on device")

    write = sitk.WriteImage
    monkeypatch.setattr(sitk, "WriteImage", full)
    err = failure(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model),
                                                "--device", "cpu"]))
    assert str(out / "case.nii.gz") in err and "/.case.nii.gz." not in err, err
    monkeypatch.setattr(sitk, "WriteImage", write)
    monkeypatch.setattr(fpnunet.atomic.tempfile, "mkstemp", _read_only)  # a read-only output folder
    err = failure(capsys, lambda: predict_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "-m",
                                                str(model), "--device", "cpu"]))
    assert "Permission denied" in err and "x7k2" not in err, err


def test_train_disk_full_names_the_file(dataset, capsys, monkeypatch):  # noqa: F811
    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 4352 vs 4246")

    save = torch.save
    monkeypatch.setattr(torch, "save", full)
    err = failure(capsys, lambda: train_main(["901", "0", "--pretrained", "none", *SHORT, *BASE]))
    assert str(fold_dir(dataset["results"]) / "checkpoint_") in err, err
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(fpnunet.atomic.json, "dump", _disk_full)
    err = failure(capsys, lambda: train_main(["901", "0", "--pretrained", "none", "--overwrite", *SHORT, *BASE]))
    assert "No space left on device" in err and str(fold_dir(dataset["results"])) in err, err
