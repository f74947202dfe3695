"""A process-wide 'stop at the next step boundary' flag.

Signal handlers (SLURM's pre-emption warning, submitit's checkpoint hook, Ctrl-C) only set
the flag; training loops poll :func:`stop_requested` between steps, write ``last.pt`` and
raise :class:`Preempted`. Saving at a step boundary keeps optimizer and schedule state
consistent, which saving from inside a signal handler cannot promise.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)
_STOP = threading.Event()


class Preempted(Exception):
    """Raised by a stage after it checkpointed because a stop was requested."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} after writing the checkpoint")
        self.step = step


def request_stop(reason: str = "") -> None:
    if not _STOP.is_set():
        log.warning(
            "stop requested%s: checkpointing at the next step", f" ({reason})" if reason else ""
        )
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
    """Route the given signals to :func:`request_stop` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        signal.signal(sig, lambda signum, _frame: request_stop(signal.Signals(signum).name))
