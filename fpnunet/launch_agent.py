"""torchrun's agent, run by ``fpn_train --gpus N`` (and ``fpn_pretrain``, ``fpn_train_folds``)::

    python -m fpnunet.launch_agent --standalone --nproc_per_node=N -m fpnunet.commands.train ...

It is ``python -m torch.distributed.run`` with one difference: when a rank fails, the rank has
already printed its one-line ``error: ...``; the agent then says which rank failed in one line
and exits with the rank's status, instead of raising torchrun's ``ChildFailedError`` (a traceback
and a table of the agent's own frames) and logging each rank's exit code.
"""
from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    """Run the agent with torchrun's arguments ``argv``; returns the exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # lazy: start-up time
    from torch.distributed.run import parse_args, run  # lazy: start-up time

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # "failed (exitcode: 1) ..."
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        status = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        print(f"error: rank {rank} of {exc.name} stopped with exit status {failure.exitcode} (its message is "
              f"above); the other ranks were stopped", file=sys.stderr, flush=True)
        return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
