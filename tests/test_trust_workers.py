"""Issue 12 item 8: loader workers die with their training process (kill -9 leaves no orphan)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training import dataset  # noqa: F401  (a fixture)

from fpnunet.lifeline import die_with_parent

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc to find the workers")


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_workers_exit_after_kill_9_of_fpn_train(dataset):  # noqa: F811
    env = dict(os.environ)
    code = ("import sys; from fpnunet.commands.train import main; "
            "main(['901', '0', '--pretrained', 'none', '--device', 'cpu', '--num-workers', '2', '--no-progress', "
            "'--epochs', '100', '--iterations-per-epoch', '100000'])")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        assert wait_for(lambda: len(children(proc.pid)) >= 2, 120), "the training started no workers"
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: not any(alive(w) for w in workers), 10), \
            f"workers {[w for w in workers if alive(w)]} outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in set(workers) | set(children(proc.pid)):  # never leave an orphan, even when the test fails
            if alive(w):
                os.kill(w, signal.SIGKILL)


def test_parent_liveness_check_without_prctl(tmp_path):
    """The portable check alone (as on macOS): a grandchild whose parent dies exits by itself."""
    code = (
        "import os, sys, time\n"
        "import fpnunet.lifeline as lifeline\n"
        "lifeline._linux_pdeathsig = lambda: False\n"
        "parent = os.getpid()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    lifeline.die_with_parent(parent, interval=0.1)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert alive(child)
        proc.kill()
        proc.wait()
        assert wait_for(lambda: not alive(child), 5), "the child outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert callable(die_with_parent)
