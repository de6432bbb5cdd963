"""Child processes that die with their parent: :func:`die_with_parent`, called in the child.

A data-loading worker whose training process is killed (``kill -9``, the OOM killer) must not
live on as an orphan holding gigabytes. Two mechanisms, both installed by the child:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when its parent dies;
* everywhere (macOS included): a daemon thread that checks every ``interval`` seconds whether the
  parent is still the process that started it (``os.getppid()`` changes when a parent dies:
  the orphan is re-parented) and ends the child with ``os._exit`` otherwise.

The same holds for the ranks torchrun starts (:func:`fpnunet.distributed.setup` calls
:func:`die_with_parent` in each rank: its parent is torchrun's agent) and for the agent that
``fpn_train --gpus N`` starts (:func:`child_dies_with_us`, a ``preexec_fn``), so a ``kill -9`` of
the agent or of the command ends every rank instead of leaving them to run on as orphans.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
_installed_for: int | None = None


def _linux_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, interval: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(interval)


def die_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """In a child process: end this process when ``parent_pid`` (its parent) dies. Idempotent."""
    global _installed_for
    if _installed_for == os.getpid():
        return
    _installed_for = os.getpid()
    _linux_pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, interval), name="fpn-lifeline", daemon=True).start()


def child_dies_with_us() -> None:
    """``subprocess.Popen(..., preexec_fn=child_dies_with_us)``: the started program (``exec``
    keeps the setting) is killed when this process dies (Linux; elsewhere a no-op)."""
    _linux_pdeathsig()
