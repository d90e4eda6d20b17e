"""Kill the builder (SIGKILL) at arbitrary moments, rerun: the dataset is byte-identical to an
uninterrupted build. Also: clip cutting, and engines (pool, job array + merge, Ray) agree."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crisscross.errors import UserError
from crisscross.preprocess.build import build_shards, merge
from crisscross.shards.reader import read_dataset

SOURCES = ["videos/grid_lipnet/bbaf2n.mpg", "videos/grid_lipnet/brbk7n.mpg", "videos/grid_lipnet/lbax4n.mpg",
           "videos/torchcodec/nasa_13013.mp4", "videos/iscc_samples/spiral_sessions_demo.mp4",
           "esc10/audio/1-100032-A-0.flac", "esc10/audio/1-110389-A-0.flac"]
OPTS = dict(name="clips", clip_seconds=4.0, samples_per_shard=3, seed=7)


def _digests(out: Path) -> dict[str, str]:
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _processes_writing(out: Path) -> list[int]:
    """Live processes whose command line names this output directory."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        try:
            if proc_dir.name.isdigit() and str(out).encode() in (proc_dir / "cmdline").read_bytes():
                if (proc_dir / "stat").read_text().split(")")[-1].split()[0] != "Z":  # not a zombie
                    found.append(int(proc_dir.name))
        except OSError:
            continue
    return found


def _parts_done(out: Path) -> int:
    return len(list((out / "_parts").glob("*.json"))) if (out / "_parts").exists() else 0


@pytest.fixture(scope="module")
def src(shared_data, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("src")
    for rel in SOURCES:
        os.symlink(shared_data / rel, d / Path(rel).name)
    return d


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    build_shards(src, out, workers=1, progress=False, **OPTS)
    return out


def test_clip_cutting_spans_and_shuffle(reference):
    info = read_dataset(reference)
    rows = info.manifest
    spiral = sorted((r for r in rows if r["source"] == "spiral_sessions_demo.mp4"), key=lambda r: r["clip_index"])
    # 60.1 s cut into 4 s clips: 15 clips, each with its span start, 64 frames, 64000 samples
    assert [r["t0"] for r in spiral] == [4.0 * i for i in range(15)]
    assert all(r["frames"] == 64 and r["audio_samples"] == 64000 for r in spiral)
    # GRID clips are 3 s: shorter than a clip, so each is one sample (its whole length)
    grid = [r for r in rows if r["source"].endswith(".mpg")]
    assert len(grid) == 3 and all(r["duration"] == pytest.approx(3.0) for r in grid)
    # cross-shard shuffle: the 15 spiral clips are spread over many shards, not one run
    assert len({r["shard"] for r in spiral}) >= 4
    # nasa 13.06 s -> 3 clips + a 1.06 s tail; ESC 5 s -> 1 clip + a 1 s tail (both >= min_seconds)
    assert len(rows) == 15 + 3 + 4 + 2 * 2
    nasa = sorted((r for r in rows if r["source"] == "nasa_13013.mp4"), key=lambda r: r["t0"])
    assert [r["frames"] for r in nasa] == [64, 64, 64, 16]


def test_sigkill_at_any_moment_then_rerun_is_identical(src, reference, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "shards", "build", str(src), "--out", str(out),
           "--name", OPTS["name"], "--clip-seconds", "4", "--samples-per-shard", "3", "--seed", "7", "--no-progress"]
    killed_mid_shard = 0
    for round_ in range(4):
        before = _parts_done(out)
        stale = set(out.glob(".*.tmp-*")) if out.exists() else set()  # left by the previous kill
        # own session: SIGKILL goes to the whole build (CLI process and its pool workers), as a
        # scheduler kills a job
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            fresh = set(out.glob(".*.tmp-*")) - stale if out.exists() else set()
            # odd rounds: kill while a shard is half-written; even rounds: right after one completes
            if (round_ % 2 and fresh) or (not round_ % 2 and _parts_done(out) > before):
                if round_ == 0:  # only the CLI process: its pool worker must not live on as an orphan
                    proc.send_signal(signal.SIGKILL)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
                killed_mid_shard += bool(fresh)
                break
            time.sleep(0.005)
        proc.wait()
        for _ in range(100):
            if not _processes_writing(out):
                break
            time.sleep(0.05)
        assert not _processes_writing(out)
    assert killed_mid_shard >= 2 and _parts_done(out) < 9  # really interrupted, several times
    subprocess.run(cmd, check=True, capture_output=True)
    assert _digests(out) == _digests(reference)


def test_partial_files_from_a_dead_run_are_redone(src, reference, tmp_path):
    out = tmp_path / "ds"
    build_shards(src, out, workers=1, progress=False, **OPTS)
    # simulate a crash inside shard 2: part file missing, tar half-written, temp files left over
    (out / "_parts" / "000002.json").unlink()
    tar = out / "clips-000002.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    (out / ".clips-000004.tar.tmp-12345").write_bytes(b"junk")
    (out / "dataset.json").unlink()
    stats = build_shards(src, out, workers=1, progress=False, **OPTS)
    assert stats.shards_skipped == 8
    assert not (out / ".clips-000004.tar.tmp-12345").exists()  # merge sweeps temp files of dead runs
    assert _digests(out) == _digests(reference)


def test_job_array_plus_merge_and_pool_give_the_same_dataset(src, reference, tmp_path):
    array = tmp_path / "array"
    per_task = []
    for task in range(3):
        per_task.append(build_shards(src, array, num_tasks=3, task_index=task, workers=1, progress=False, **OPTS))
        if task < 2:
            with pytest.raises(UserError, match="not complete"):
                merge(array)
    merged = merge(array)
    assert sum(t.samples for t in per_task) == merged.samples and sum(t.shards for t in per_task) == merged.shards
    assert _digests(array) == _digests(reference)
    pool = tmp_path / "pool"
    build_shards(src, pool, workers=2, progress=False, **OPTS)
    assert _digests(pool) == _digests(reference)


def test_ray_engine_on_a_local_instance_gives_the_same_dataset(src, reference, tmp_path):
    out = tmp_path / "ray"
    build_shards(src, out, engine="ray", workers=2, progress=False, **OPTS)
    assert _digests(out) == _digests(reference)
