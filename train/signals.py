"""Preemption signals: SIGTERM/SIGUSR1 set a flag that the training loop reads between steps."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (cluster preemption) while training; the loop checks it between steps.

    A context manager: the previous handlers come back afterwards, so a program that calls
    ``train()`` and then does other work (the demo) is terminated by SIGTERM as usual.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
