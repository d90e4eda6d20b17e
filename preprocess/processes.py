"""Process helpers of the build: workers that die with their parent, a time limit on a call, and
a call run in a forked child so that a crash (segfault, abort) or a hang costs the child only.

Kept apart from what they serve (the engines run tasks, ``samples.py`` decodes one source,
``plan.py`` probes headers) so that those modules import this one and never each other.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


class TimeLimitExceeded(Exception):
    """Raised inside a ``time_limit`` block when its time is up."""


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``), so
    a build killed with SIGKILL leaves no orphan worker behind (pool workers otherwise wait for
    work forever). Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeLimitExceeded`` in the block after ``seconds`` (SIGALRM). PyAV returns to Python
    between packets, so a stuck decode is cut off. Only in a main thread (signals); elsewhere, and
    for ``seconds <= 0``, no limit is applied."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class ChildOutcome:
    """What ``call_in_child`` got: the value (``ok``), or why not (``timed_out``, else the child
    died: ``exitcode``)."""

    ok: bool
    value: Any = None
    timed_out: bool = False
    exitcode: int | None = None


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple) -> None:
    die_with_parent()
    conn.send(fn(*args))
    conn.close()


def call_in_child(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> ChildOutcome:
    """``fn(*args)`` in a forked child (the arguments are inherited, the result is pickled back).
    A child that dies before answering, or does not answer within ``timeout`` seconds (then it is
    killed), gives an outcome without a value instead of an exception in the caller."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(sender, fn, args))
    child.start()
    sender.close()
    outcome = None
    try:
        if receiver.poll(timeout):
            outcome = ChildOutcome(True, receiver.recv())  # before join: a large result would block the send
        else:
            outcome = ChildOutcome(False, timed_out=True)
    except EOFError:
        pass  # the child died before sending
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    return outcome or ChildOutcome(False, exitcode=child.exitcode)
