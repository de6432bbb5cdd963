"""Issue 30: a rank's one-line error is the last word of a torchrun launch (``--gpus N``): the agent
(``fpnunet.launch_agent``) adds one line naming the rank, not torchrun's ChildFailedError
traceback and table (a real launch, 2 CPU processes, ~5 s)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RANK = """
import os, sys, time
if os.environ["RANK"] == "1":
    print("error: tiny_004.npy: holds NaN or Inf values", file=sys.stderr)
    sys.exit(1)
time.sleep(60)
"""


def test_a_failed_rank_ends_the_launch_in_one_line(tmp_path: Path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fpnunet.launch_agent", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr, done.stderr
    assert err[0] == "error: tiny_004.npy: holds NaN or Inf values", done.stderr
    assert len(err) == 2 and err[1].startswith("error: rank 1 ") and "exit status 1" in err[1], done.stderr
