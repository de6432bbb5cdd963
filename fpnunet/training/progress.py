"""The run's clock: an ETA for the whole training, validation included, and the heartbeat.

The epoch loop reports every training iteration and every validation (BatchNorm recalibration
included) to a :class:`RunClock`; the estimate of what is left is

    iterations left x (training seconds / iterations so far, loader waits included)
    + validations left x (mean seconds of the validations so far)

so it covers ``epochs x iterations_per_epoch`` and every ``val_every`` validation, not just the
current epoch. Until the first validation has been timed the estimate says so
(``+ N validations``). The final validation with flip TTA that ``fpn_train`` runs after the loop
is not part of it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min 05 s``, ``3 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


@dataclass
class RunClock:
    """Times a run's iterations and validations and estimates the time left.

    Args:
        epochs: the run's epochs.
        iterations_per_epoch: training iterations per epoch.
        validates_at: ``validates_at(epoch)`` for a 0-based epoch (:meth:`RunConfig.validates_at`).
        heartbeat_s: seconds between heartbeat lines (0: none); see :meth:`heartbeat_due`.
        now: the clock (``time.perf_counter``; a test passes a fake one).
    """

    epochs: int
    iterations_per_epoch: int
    validates_at: Callable[[int], bool]
    heartbeat_s: float = 0.0
    now: Callable[[], float] = time.perf_counter
    train_seconds: float = 0.0
    iterations: int = 0
    validation_seconds: list[float] = field(default_factory=list)
    last_output: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_output = self.now()

    def add_iterations(self, seconds: float, count: int = 1) -> None:
        self.train_seconds += seconds
        self.iterations += count

    def add_validation(self, seconds: float) -> None:
        self.validation_seconds.append(seconds)

    def seconds_per_iteration(self) -> float | None:
        return self.train_seconds / self.iterations if self.iterations else None

    def remaining(self, epoch: int, iterations_done: int, validated: bool = False) -> tuple[float | None, int]:
        """``(seconds, untimed_validations)`` left from 0-based ``epoch`` after ``iterations_done`` of
        its iterations (``validated``: the epoch's validation is behind too). ``seconds`` is ``None``
        before the first timed iteration; validations are counted in it once one was timed, else
        returned as ``untimed_validations``."""
        per_it = self.seconds_per_iteration()
        if per_it is None:
            return None, 0
        its = (self.epochs - epoch - 1) * self.iterations_per_epoch + max(0, self.iterations_per_epoch
                                                                        - iterations_done)
        vals = sum(self.validates_at(e) for e in range(epoch + 1, self.epochs))
        if not validated and self.validates_at(epoch):
            vals += 1
        seconds = its * per_it
        if self.validation_seconds:
            return seconds + vals * sum(self.validation_seconds) / len(self.validation_seconds), 0
        return seconds, vals

    def eta_text(self, epoch: int, iterations_done: int, validated: bool = False) -> str:
        """``run ETA 1 h 02 min`` (``+ 3 validations`` while none was timed yet); ``""`` when unknown."""
        seconds, untimed = self.remaining(epoch, iterations_done, validated)
        if seconds is None:
            return ""
        if seconds <= 0 and not untimed:
            return "run ETA 0 s"
        text = f"run ETA {format_duration(seconds)}"
        if untimed:
            text += f" + {untimed} validation{'s' if untimed > 1 else ''}"
        finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
        return f"{text} (about {finish})" if not untimed else text

    def heartbeat_due(self) -> bool:
        """Whether ``heartbeat_s`` passed since the last line printed (:meth:`printed` resets it)."""
        return self.heartbeat_s > 0 and self.now() - self.last_output >= self.heartbeat_s

    def printed(self) -> None:
        self.last_output = self.now()
