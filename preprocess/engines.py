"""Run shard tasks: in-process, on a local process pool, or on a Ray cluster.

A task is one shard (``build.write_shard``); it is idempotent and independent of the others, so
any engine, any number of workers and any job-array split give the same bytes. Job arrays
(``--num-tasks/--task-index``) are handled by the caller choosing which shards to run here.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from tqdm import tqdm

ENGINES = ("local", "ray")

# set once per pool worker by _init_worker, so that a task only carries its shard number
# (the plan can list millions of samples: it must not be pickled per task)
_progress_queue = None
_worker_job: tuple[Path, dict] | None = None


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies, so a build killed with
    SIGKILL leaves no orphan worker behind (pool workers otherwise wait for work forever)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _init_worker(queue, out_dir: str, plan: dict) -> None:
    import signal

    global _progress_queue, _worker_job
    die_with_parent()
    # Ctrl-C reaches the whole process group: the parent alone decides (it kills the workers),
    # so a worker never dies half-way with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _progress_queue = queue
    _worker_job = (Path(out_dir), plan)


def _tick(n: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put(n)


def _pool_task(shard: int, isolate: bool = False) -> int:
    from crisscross.preprocess.build import write_shard

    out_dir, plan = _worker_job
    write_shard(out_dir, plan, shard, progress=_tick, isolate=isolate)
    return shard


def _bar(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="clip", desc="shards build", disable=not enabled, smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} clips [{elapsed}<{remaining}, {rate_fmt}]")


def run_shards(out_dir: Path, plan: dict, shards: list[int], *, engine: str = "local", workers: int = 1,
               address: str | None = None, progress: bool = True, isolate: bool = False) -> None:
    """Build ``shards``. ``isolate`` decodes every source in its own child process from the start;
    without it the pool and Ray engines still fall back to that, for the shards left, when a
    worker process dies (a decoder crash), so one bad file cannot stop the build."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    if not shards:
        return
    total = sum(len(plan["shards"][j]) for j in shards)
    with _bar(total, progress) as bar:
        if engine == "ray":
            _run_ray(out_dir, plan, shards, address, bar, workers, isolate)
        else:  # even one worker runs in a child process, so a decoder crash cannot kill the caller
            left = _run_pool(out_dir, plan, shards, max(1, workers), bar, isolate)
            if left:
                bar.write(f"a worker process died; rebuilding {len(left)} shard(s) with one process per source")
                if _run_pool(out_dir, plan, left, workers, bar, True):
                    raise RuntimeError("worker processes keep dying outside decoding; see the log")


def _run_pool(out_dir: Path, plan: dict, shards: list[int], workers: int, bar: tqdm, isolate: bool) -> list[int]:
    """Run shards on a process pool; returns the shards not finished if a worker died."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # fork: workers inherit the imported modules and the plan (passed once, not per task)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    done: set[int] = set()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(shards)), mp_context=ctx, initializer=_init_worker,
                               initargs=(queue, str(out_dir), plan))
    try:
        futures = {pool.submit(_pool_task, j, isolate): j for j in shards}
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
        _remove_unfinished(out_dir, plan, [j for j in shards if j not in done])
        raise
    pool.shutdown(wait=True)
    _drain(queue, bar)
    return [j for j in shards if j not in done]


def _stop_pool(pool) -> None:
    """Kill the workers (and with them their decoding children) and drop the queued tasks."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.join(timeout=5)


def _remove_unfinished(out_dir: Path, plan: dict, shards: list[int]) -> None:
    """What killed tasks left of their shards (temporaries, a tar renamed before its part file):
    nothing a rerun would take for whole remains; complete shards are kept."""
    from crisscross.preprocess.build import remove_leftovers, shard_is_complete

    for j in shards:
        if not shard_is_complete(out_dir, None, j):
            remove_leftovers(out_dir, plan["config"]["name"], j)


def _drain(queue, bar: tqdm) -> None:
    import queue as queue_mod

    while True:
        try:
            bar.update(queue.get_nowait())
        except queue_mod.Empty:
            return


def _run_ray(out_dir: Path, plan: dict, shards: list[int], address: str | None, bar: tqdm, workers: int,
             isolate: bool) -> None:
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
        plan_ref = ray.put(plan)
        refs = {remote.remote(str(out_dir), plan_ref, j, isolate): j for j in shards}
        try:
            _wait_ray(ray, refs, remote, out_dir, plan, plan_ref, bar, isolate, WorkerCrashedError)
        except BaseException:  # Ctrl-C: cancel what runs and what is queued, tidy the unfinished shards
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            _remove_unfinished(out_dir, plan, sorted(refs.values()))
            raise
    finally:
        if started_here:
            ray.shutdown()


def _wait_ray(ray, refs: dict, remote, out_dir: Path, plan: dict, plan_ref, bar: tqdm, isolate: bool,
              crashed: type) -> None:
    """Collect Ray results as they come; a crashed worker's shard is rerun with isolation."""
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        for ref in ready:
            shard = refs.pop(ref)
            try:
                ray.get(ref)  # re-raises a task's failure
            except crashed:
                if isolate:
                    raise
                refs[remote.remote(str(out_dir), plan_ref, shard, True)] = shard  # again, crash-proof
                continue
            bar.update(len(plan["shards"][shard]))


def _ray_task(out_dir: str, plan: dict, shard: int, isolate: bool = False) -> int:
    from crisscross.preprocess.build import write_shard

    write_shard(Path(out_dir), plan, shard, isolate=isolate)
    return shard
