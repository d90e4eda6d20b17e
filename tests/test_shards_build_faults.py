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
