"""Shard build faults (issue 13): a build where most inputs fail says so and exits non-zero with
the failures counted by reason; a Ray worker killed mid-task has its shard redone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "crisscross.tools.cli", "shards"]


@pytest.fixture(scope="module")
def mostly_broken(tmp_path_factory) -> Path:
    """A manifest of 4 demo clips, 3 of them overwritten with bytes no demuxer reads."""
    from crisscross.tools.demo_data import generate_demo_clips

    root = tmp_path_factory.mktemp("mostly_broken")
    manifest = generate_demo_clips(root / "clips", num_classes=2, clips_per_class=2, seconds=2.0)
    clips = sorted((root / "clips").rglob("*.mp4"))
    assert len(clips) == 4
    for clip in clips[1:]:
        clip.write_bytes(b"not a video " * 100)
    return Path(manifest)


def _build(manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "build", str(manifest), "--out", str(out), "--no-progress", *extra],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_a_build_where_most_sources_fail_exits_non_zero_with_counted_reasons(mostly_broken, tmp_path):
    done = _build(mostly_broken, tmp_path / "out")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert "3 of 4 sources failed, more than --max-error-fraction 0.5" in error, error
    assert "{'not_media': 3}" in error and "errors.parquet" in error  # the failures counted by reason
    assert "1 samples" in done.stdout and "3 errors" in done.stdout  # the summary is still printed
    assert (tmp_path / "out" / "dataset.json").exists()  # the dataset was written, the verdict is the exit status

    # accepting it: the same command (a resume: no work) with a higher bound passes
    again = _build(mostly_broken, tmp_path / "out", "--max-error-fraction", "0.9")
    assert again.returncode == 0, again.stderr[-2000:]


def _running_ray_task(root: int, descendants) -> int | None:
    """A Ray worker below ``root`` that is executing a shard task (its title is ray::_ray_task)."""
    for pid in descendants(root):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_ray_task"):
                return pid
        except OSError:
            continue
    return None


def _digests(out: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_ray_worker_killed_mid_task_is_retried_and_the_dataset_is_complete(tmp_path, descendants):
    import signal
    import time

    from crisscross.tools.demo_data import generate_demo_clips

    manifest = generate_demo_clips(tmp_path / "clips", num_classes=2, clips_per_class=3, seconds=6.0)
    options = ["--samples-per-shard", "1", "--workers", "2"]
    reference = _build(manifest, tmp_path / "pool", *options)
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "ray"
    process = subprocess.Popen([*CLI, "build", str(manifest), "--out", str(out), "--no-progress", "--engine", "ray",
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    victim, deadline = None, time.monotonic() + 240
    while victim is None:
        assert process.poll() is None, "the build ended before a task could be killed"
        assert time.monotonic() < deadline, "no Ray task seen running"
        victim = _running_ray_task(process.pid, descendants)
        time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)  # the worker dies mid-shard
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "died or was killed while executing a task" in output  # Ray saw the kill mid-task
    assert "6 samples" in output and "0 errors" in output
    assert _digests(out) == _digests(tmp_path / "pool")  # the killed shard was redone, byte for byte
