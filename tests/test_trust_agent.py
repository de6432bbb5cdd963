"""Issue 30 item 7: a kill -9 of torchrun's agent ends its ranks (a real torchrun launch, 2 CPU
ranks over gloo, ~5 s), as a kill -9 of a training process ends its loader workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RANK = """
import os, sys, time
from fpnunet import distributed as fdist
fdist.setup("cpu")
out = sys.argv[1]
with open(os.path.join(out, f"rank{fdist.rank()}.pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG: Linux")
def test_ranks_die_with_their_torchrun_agent(tmp_path: Path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script), str(tmp_path)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(pids) < 2:
            files = [tmp_path / f"rank{r}.pid" for r in (0, 1)]
            if all(f.is_file() and f.read_text() for f in files):
                pids = [int(f.read_text()) for f in files]
            time.sleep(0.2)
        assert len(pids) == 2, "torchrun did not start both ranks"
        assert all(_alive(p) for p in pids)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "a rank outlived its torchrun agent"
    finally:
        if agent.poll() is None:
            agent.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_the_gpus_launch_ends_its_agent_with_the_command(monkeypatch):
    """fpn_train --gpus N: the torchrun agent it starts gets PR_SET_PDEATHSIG (SIGKILL), so a kill -9
    of the command ends the agent, and with it (above) the ranks."""
    from fpnunet import distributed as fdist
    from fpnunet.lifeline import child_dies_with_us

    seen: dict = {}
    monkeypatch.setattr(subprocess, "call", lambda command, **kw: seen.update(kw) or 0)
    assert fdist.launch("fpnunet.commands.train", ["900", "0", "--gpus", "2"], 2) == 0
    assert seen.get("preexec_fn") is child_dies_with_us
    if not sys.platform.startswith("linux"):
        return
    probe = ("import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); "
             "print(v.value)")  # PR_GET_PDEATHSIG in the started program (after exec)
    monkeypatch.undo()
    out = subprocess.run([sys.executable, "-c", probe], preexec_fn=child_dies_with_us, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == str(int(signal.SIGKILL)), out.stderr
