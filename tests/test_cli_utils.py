"""run_cli error handling and the malloc tuning every fpn_* command applies."""
import sys

import pytest

from fpnunet.cli_utils import resolve_device, run_cli, tune_malloc
from fpnunet.errors import FPNError


def test_run_cli_prints_user_errors_without_traceback(capsys):
    @run_cli
    def main(argv=None):
        raise FPNError("data/x.nii.gz: label shape (3, 4) does not match")

    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: data/x.nii.gz: label shape") and "Traceback" not in err


def test_run_cli_passes_status():
    @run_cli
    def main(argv=None):
        return 3 if argv else 0

    assert main([]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["x"])
    assert exc.value.code == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_malloc_applies_and_can_be_disabled(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("FPN_NO_MALLOC_TUNING", raising=False)
    assert tune_malloc() is True
    monkeypatch.setenv("FPN_NO_MALLOC_TUNING", "1")
    assert tune_malloc() is False


def test_resolve_device_rejects_unknown():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(FPNError, match="unknown --device"):
        resolve_device("tpu")
