"""Run numbered tasks: on a local process pool or on a Ray cluster.

An engine runs any task function ``task(number, progress=None, isolate=False)``; it knows nothing
of shards. The build's task is one shard (``build.write_shard`` bound to the output folder and
the plan): idempotent and independent of the others, so any engine, any number of workers and
any job-array split give the same bytes. Job arrays (``--num-tasks/--task-index``) are handled by
the caller choosing which tasks to run here.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from crisscross.preprocess.processes import die_with_parent

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """What the engines run. ``task(number, progress=None, isolate=False)`` does task ``number``
    (``progress(n)`` reports n units done; ``isolate`` asks it to guard each unit of work in a child
    process). ``sizes[number]`` is its units of work (the progress bar's total). ``tidy(numbers)``
    removes what interrupted tasks left behind. ``task`` is pickled for Ray workers (a module-level
    function, or a ``functools.partial`` of one); pool workers inherit it by fork, unpickled."""

    task: Callable[..., Any]
    sizes: Sequence[int]
    tidy: Callable[[list[int]], None] | None = None
    unit: str = "clip"  # what sizes count (the progress bar's unit)
    noun: str = "shard"  # what a task is, in messages
    desc: str = "shards build"


# set once per pool worker by _init_worker, so that a task only carries its number
# (a build plan can list millions of samples: it must not be pickled per task)
_progress_queue = None
_worker_task: Callable[..., Any] | None = None


def _init_worker(queue: Any, task: Callable[..., Any]) -> None:
    import signal

    global _progress_queue, _worker_task
    die_with_parent()
    # Ctrl-C reaches the whole process group: the parent alone decides (it kills the workers),
    # so a worker never dies half-way with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _progress_queue = queue
    _worker_task = task


def _tick(n: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put(n)


def _pool_task(number: int, isolate: bool = False) -> int:
    _worker_task(number, progress=_tick, isolate=isolate)
    return number


def _bar(total: int, enabled: bool, job: Job) -> tqdm:
    return tqdm(total=total, unit=job.unit, desc=job.desc, disable=not enabled, smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} " + job.unit + "s [{elapsed}<{remaining}, {rate_fmt}]")


def run_tasks(job: Job, numbers: list[int], *, engine: str = "local", workers: int = 1, address: str | None = None,
              progress: bool = True, isolate: bool = False) -> None:
    """Run tasks ``numbers`` of ``job``. ``isolate`` guards every unit of work in its own child
    process from the start; without it the pool and Ray engines still fall back to that, for the
    tasks left, when a worker process dies (a decoder crash), so one bad input cannot stop the run."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    if not numbers:
        return
    total = sum(job.sizes[j] for j in numbers)
    with _bar(total, progress, job) as bar:
        if engine == "ray":
            _run_ray(job, numbers, address, bar, workers, isolate)
        else:  # even one worker runs in a child process, so a decoder crash cannot kill the caller
            left = _run_pool(job, numbers, max(1, workers), bar, isolate)
            if left:
                bar.write(f"a worker process died; rebuilding {len(left)} {job.noun}(s) with isolation (one child process per "
                          "source)")
                if _run_pool(job, left, workers, bar, True):
                    raise RuntimeError("worker processes keep dying outside decoding; see the log")


def _run_pool(job: Job, numbers: list[int], workers: int, bar: tqdm, isolate: bool) -> list[int]:
    """Run tasks on a process pool; returns the tasks not finished if a worker died."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # fork: workers inherit the imported modules and the task (passed once, not per task)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    done: set[int] = set()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(numbers)), mp_context=ctx, initializer=_init_worker,
                               initargs=(queue, job.task))
    try:
        futures = {pool.submit(_pool_task, j, isolate): j for j in numbers}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, bar)
            for future in finished:
                future.result()  # re-raises a task's exception (not a decode error: those are rows)
                done.add(futures[future])
    except BrokenProcessPool:
        pass
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or a task's error: stop now, not after the queue
        _stop_pool(pool)
        _tidy(job, [j for j in numbers if j not in done])
        raise
    pool.shutdown(wait=True)
    _drain(queue, bar)
    return [j for j in numbers if j not in done]


def _stop_pool(pool: Any) -> None:
    """Kill the workers (and with them their decoding children) and drop the queued tasks."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.join(timeout=5)


def _tidy(job: Job, numbers: list[int]) -> None:
    if job.tidy is not None:
        job.tidy(numbers)


def _drain(queue: Any, bar: tqdm) -> None:
    import queue as queue_mod

    while True:
        try:
            bar.update(queue.get_nowait())
        except queue_mod.Empty:
            return


def _run_ray(job: Job, numbers: list[int], address: str | None, bar: tqdm, workers: int, isolate: bool) -> None:
    import ray
    from ray.exceptions import WorkerCrashedError

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a local instance sized like the local pool
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(_ray_task)
        task_ref = ray.put(job.task)  # once: the task carries the whole plan
        refs = {remote.remote(task_ref, j, isolate): j for j in numbers}
        try:
            _wait_ray(ray, refs, remote, task_ref, job, bar, isolate, WorkerCrashedError)
        except BaseException:  # Ctrl-C: cancel what runs and what is queued, tidy the unfinished tasks
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            _tidy(job, sorted(refs.values()))
            raise
    finally:
        if started_here:
            ray.shutdown()


def _wait_ray(ray: Any, refs: dict, remote: Any, task_ref: Any, job: Job, bar: tqdm, isolate: bool,
              crashed: type) -> None:
    """Collect Ray results as they come; a crashed worker's task is rerun with isolation."""
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            number = refs.pop(ref)
            try:
                ray.get(ref)  # re-raises a task's failure
            except crashed:
                if isolate:
                    raise
                refs[remote.remote(task_ref, number, True)] = number  # again, crash-proof
                continue
            bar.update(job.sizes[number])


def _ray_task(task: Callable[..., Any], number: int, isolate: bool = False) -> int:
    task(number, isolate=isolate)
    return number
