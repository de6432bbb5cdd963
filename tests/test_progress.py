"""The run's ETA (epochs x iterations, validation included), the --no-progress heartbeat and the
labels of the epoch line."""
from __future__ import annotations

import re

import numpy as np
import pytest

from fpnunet.training.logger import RunClock, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 65, 3600 * 3 + 125)] == ["4 s", "1 min 05 s", "3 h 02 min"]


def test_eta_covers_every_epoch_and_validation():
    clock = FakeClock()
    run = RunClock(epochs=4, iterations_per_epoch=10, validates_at=lambda e: e in (1, 3), now=clock)
    assert run.remaining(0, 0) == (None, 0) and run.eta_text(0, 0) == ""
    run.add_iterations(20.0, count=10)  # 2 s per iteration, epoch 0 done; no validation timed yet
    assert run.remaining(0, 10) == (pytest.approx(60.0), 2)
    assert run.eta_text(0, 10) == "run ETA 1 min 00 s + 2 validations"
    run.add_iterations(10.0, count=5)  # still 2 s/it; half of epoch 1
    run.add_validation(30.0)
    seconds, untimed = run.remaining(1, 5)  # 5 + 20 iterations, validations of epochs 1 and 3
    assert untimed == 0 and seconds == pytest.approx(25 * 2 + 2 * 30)
    seconds, _ = run.remaining(1, 10, validated=True)  # after epoch 1's validation: only epoch 3's
    assert seconds == pytest.approx(20 * 2 + 30)
    assert run.eta_text(1, 10, validated=True).startswith("run ETA 1 min 10 s (about ")
    assert run.remaining(3, 10, validated=True)[0] == pytest.approx(0.0)


def test_heartbeat_every_n_seconds():
    clock = FakeClock()
    run = RunClock(epochs=1, iterations_per_epoch=1, validates_at=lambda e: True, heartbeat_s=30, now=clock)
    clock.t = 29.9
    assert not run.heartbeat_due()
    clock.t = 30.0
    assert run.heartbeat_due()
    run.printed()
    clock.t = 45.0
    assert not run.heartbeat_due()
    assert not RunClock(1, 1, lambda e: True, heartbeat_s=0, now=clock).heartbeat_due()


# ----------------------------------------------------------------------------- in the epoch loop
class _Source:
    def __iter__(self):
        while True:
            yield {"data": np.ones((2, 1, 2, 2, 2), np.float32)}

    def close(self) -> None:
        pass


class _Task:
    metric_columns = ("val_loss", "val_dice")
    score_column = "val_dice"

    def train_batches(self, epoch: int) -> _Source:
        return _Source()

    def loss(self, output, batch):
        return (output - 1.0).pow(2).mean()

    def validate(self, model, epoch: int) -> dict[str, float]:
        return {"val_loss": 0.5, "val_dice": 0.75}


def _loop(tmp_path, progress: bool, heartbeat_s: float):
    import torch

    from fpnunet.training.loop import EpochLoop
    from fpnunet.training.run_config import RunConfig

    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    settings = RunConfig(epochs=2, iterations_per_epoch=3, val_every=1, progress=progress,
                            heartbeat=heartbeat_s, bn_recalibration=0)
    return EpochLoop(_Task(), model, optimizer, None, settings, tmp_path, {"name": "conv"}, plot=False)


def test_no_progress_prints_heartbeats_with_the_run_eta(tmp_path, capsys):
    _loop(tmp_path, progress=False, heartbeat_s=1e-9).run()
    lines = capsys.readouterr().out.splitlines()
    beats = [line for line in lines if " iteration " in line]
    assert [b.split(":")[0] for b in beats] == [f"epoch {e}/2 iteration {i}/3" for e in (1, 2) for i in (1, 2, 3)]
    assert all(re.search(r"loss \d\.\d{4}, \d+\.\d\d s/it, run ETA ", b) for b in beats)
    assert "+ 2 validations" in beats[0]  # no validation timed yet: said, not guessed
    assert "validation" not in beats[3]  # epoch 2: the first validation's time is in the estimate
    epochs = [line for line in lines if line.startswith("epoch ") and " iteration " not in line]
    assert len(epochs) == 2
    assert "val Dice (no TTA) 0.7500 (best)" in epochs[0] and "val_loss 0.5000" in epochs[0]
    assert "run ETA" in epochs[0] and "run ETA" not in epochs[1]  # nothing left after the last


def test_progress_bar_mode_prints_no_heartbeat(tmp_path, capsys):
    _loop(tmp_path, progress=True, heartbeat_s=1e-9).run()
    assert " iteration " not in capsys.readouterr().out
