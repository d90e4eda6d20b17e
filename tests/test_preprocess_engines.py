"""The engines run any numbered task function (not only shard writing), and the process helpers
turn a crash or a hang in a child into an outcome instead of an exception in the caller."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import pytest

from crisscross.preprocess import engines
from crisscross.preprocess.processes import TimeLimitExceeded, call_in_child, time_limit


def _write(folder: Path, number: int, progress=None, isolate: bool = False) -> None:
    (folder / f"{number}.txt").write_text(f"{number} isolate={isolate}")
    if progress is not None:
        progress(1)


def _fail_on_one(folder: Path, number: int, progress=None, isolate: bool = False) -> None:
    if number == 1:
        raise RuntimeError("task 1 failed")
    _write(folder, number, progress, isolate)


def _die_unless_isolated(folder: Path, number: int, progress=None, isolate: bool = False) -> None:
    if number == 1 and not isolate:
        os._exit(3)  # a worker process that dies (as a decoder crash would take it down)
    _write(folder, number, progress, isolate)


def test_the_pool_runs_any_task_function_on_the_numbers_given(tmp_path):
    job = engines.Job(task=functools.partial(_write, tmp_path), sizes=[1, 1, 1, 1], unit="item", desc="test")
    engines.run_tasks(job, [0, 2, 3], workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "2.txt", "3.txt"]
    assert (tmp_path / "2.txt").read_text() == "2 isolate=False"


def test_a_failing_task_stops_the_run_and_tidies_what_was_not_finished(tmp_path):
    tidied: list[list[int]] = []
    job = engines.Job(task=functools.partial(_fail_on_one, tmp_path), sizes=[1, 1, 1], tidy=tidied.append)
    with pytest.raises(RuntimeError, match="task 1 failed"):
        engines.run_tasks(job, [0, 1, 2], workers=1, progress=False)
    assert tidied and 1 in tidied[0] and not (tmp_path / "1.txt").exists()


def test_a_dead_worker_reruns_the_tasks_left_in_isolation(tmp_path):
    job = engines.Job(task=functools.partial(_die_unless_isolated, tmp_path), sizes=[1, 1, 1])
    engines.run_tasks(job, [0, 1, 2], workers=1, progress=False)
    assert (tmp_path / "1.txt").read_text() == "1 isolate=True"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "1.txt", "2.txt"]


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown engine"):
        engines.run_tasks(engines.Job(task=print, sizes=[1]), [0], engine="threads")


def test_call_in_child_returns_the_value_or_says_why_not():
    assert call_in_child(sum, [1, 2, 3]).value == 6
    died = call_in_child(_abort)
    assert not died.ok and not died.timed_out and died.exitcode == -signal.SIGABRT
    stuck = call_in_child(time.sleep, 60, timeout=0.5)
    assert not stuck.ok and stuck.timed_out


def _abort() -> None:
    import faulthandler

    faulthandler.disable()  # pytest's handler, inherited by the fork, would print a stack dump
    os.abort()  # a crash by signal, as a decoder's segfault or abort


def test_time_limit_interrupts_a_long_call_and_restores_the_alarm_handler():
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(TimeLimitExceeded), time_limit(0.2):
        time.sleep(60)
    assert signal.getsignal(signal.SIGALRM) == before
    with time_limit(0):  # no limit
        pass
