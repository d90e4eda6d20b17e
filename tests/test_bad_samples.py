"""Bad samples in training (issue 13): skipped, replaced within the batch, counted, bounded.

Shards are built from generated demo clips; then one sample's MP4 header is overwritten (its
sample table no longer parses: caught while feeding the decoder) and another sample's JPEG
frames are zeroed (the MP4 parses, the image decoder fails: found by decoding one by one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crisscross.shards.loader import BadSampleLimitError


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory, demo_shards_builder) -> Path:
    return demo_shards_builder(tmp_path_factory.mktemp("bad_samples"), num_classes=2, clips_per_class=4, seconds=3.0,
                               workers=1)


def _corrupt(shards: Path, dst: Path, video_members) -> dict[str, str]:
    """A copy of ``shards`` with two bad samples: {key: how it is broken}."""
    import shutil

    shutil.copytree(shards, dst)
    members = video_members(dst)
    (tar_a, key_a, off_a, _), (tar_b, key_b, off_b, size_b) = members[1], members[5]
    with open(tar_a, "r+b") as handle:  # the MP4's first box sizes: the sample table cannot be read
        handle.seek(off_a)
        handle.write(b"\xff" * 64)
    with open(tar_b, "r+b") as handle:  # every JPEG frame's Huffman tables broken inside an intact MP4
        handle.seek(off_b)  # (frame headers intact: the loader's header check passes, the decoder fails)
        payload = bytearray(handle.read(size_b))
        start = payload.find(b"mdat") + 4
        end = payload.find(b"moov") if payload.find(b"moov") > start else len(payload)
        marker = payload.find(b"\xff\xc4", start, end)  # DHT: length (2), class/id (1), 16 code counts
        assert marker > 0
        while 0 < marker < end:
            payload[marker + 5 : marker + 21] = b"\xff" * 16  # counts summing past 256: a bogus table
            marker = payload.find(b"\xff\xc4", marker + 21, end)
        handle.seek(off_b)
        handle.write(payload)
    return {key_a: "feed", key_b: "decode"}


@pytest.fixture(scope="module")
def bad_shards(clean_shards, tmp_path_factory, video_members) -> tuple[Path, dict[str, str]]:
    dst = tmp_path_factory.mktemp("bad_copy") / "shards"
    return dst, _corrupt(clean_shards, dst, video_members)


def _data(shards: Path, **extra) -> dict:
    return {"shards": str(shards), "frames": 4, "frame_stride": 2, "crop": 64, "audio_seconds": 1.0,
            "num_threads": 1, "shuffle_buffer": 4, **extra}


def test_bad_samples_are_replaced_within_the_batch_and_counted(bad_shards):
    from crisscross.shards.loader import build_train_loader

    shards, broken = bad_shards
    loader = build_train_loader(_data(shards, max_bad_fraction=0.5), batch_size=4, seed=0)
    seen: list[str] = []
    for _ in range(2):  # two epochs: the bad samples are met (and counted) once per epoch
        for batch in loader:
            assert batch["v1"].shape[0] == batch["a1"].shape[0] == len(batch["key"]) == 4
            assert torch.isfinite(batch["v1"]).all() and batch["data_error"] is None
            seen += batch["key"]
    assert not set(broken) & set(seen)  # never trained on
    stats = loader.stats()
    assert stats["bad_samples"] == 4 and stats["samples"] == 16
    records = loader.bad_samples.drain()
    assert sorted((r["key"], r["stage"]) for r in records[:2]) == sorted(broken.items())
    assert all(r["shard"].endswith(".tar") and r["reason"] for r in records)
    assert loader.bad_samples.drain() == []  # drained once

    # resume keeps the counters: a restored loader continues the count and the bound
    state = loader.state_dict()
    again = build_train_loader(_data(shards, max_bad_fraction=0.5), batch_size=4, seed=0)
    again.load_state_dict(state)
    assert again.stats()["bad_samples"] == 4 and again.bad_samples.bad == 4


def test_strict_bound_stops_at_the_first_bad_sample_naming_it(bad_shards):
    from crisscross.shards.loader import build_train_loader

    shards, broken = bad_shards
    loader = build_train_loader(_data(shards, max_bad_fraction=0.0, shuffle=False), batch_size=4, seed=0)
    with pytest.raises(BadSampleLimitError) as caught:
        for _ in loader:
            pass
    message = str(caught.value)
    first = next(iter(broken))  # shard order, no shuffle: the feed-stage one comes first
    assert first in message and "demo-000000.tar" in message and "max_bad_fraction=0" in message


def test_missing_shards_are_listed_together_before_any_work(clean_shards, tmp_path):
    import shutil

    from crisscross.shards.loader import ShardError, find_shards

    copy = tmp_path / "shards"
    shutil.copytree(clean_shards, copy)
    dataset = json.loads((copy / "dataset.json").read_text())
    dataset["shards"] = [*dataset["shards"], "demo-000007.tar", "demo-000009.tar"]
    (copy / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ShardError, match=r"2 of 3 shards .* do not exist") as caught:
        find_shards(copy, retry_delays=(0.01,))
    assert "demo-000007.tar" in str(caught.value) and "demo-000009.tar" in str(caught.value)


def test_a_shard_missing_for_a_moment_is_found_on_a_second_look(clean_shards, tmp_path):
    """A shard renamed away and back (a copy or rename in flight on a network file system) is read
    after the retry pause; without the retry the same moment is a ShardError."""
    import shutil
    import threading

    from crisscross.shards.loader import ShardError, find_shards

    copy = tmp_path / "shards"
    shutil.copytree(clean_shards, copy)
    shard = sorted(copy.glob("*.tar"))[0]
    away = shard.with_name(shard.name + ".moving")
    shard.rename(away)
    with pytest.raises(ShardError, match="do not exist"):
        find_shards(copy, retry_delays=())
    back = threading.Timer(0.3, away.rename, args=(shard,))
    back.start()
    found = find_shards(copy, retry_delays=(2.0,))
    back.join()
    assert str(shard) in found.tars


def _pretrain(run_dir: Path, shards: Path, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "pretrain", "--config", "demo", f"data.shards={shards}",
           f"run.dir={run_dir}", "optim.batch_size=4", "run.epochs=3", "run.log_every=1", "run.checkpoint_every=2",
           "run.tensorboard=false", "run.export=false", *extra]
    if resume:
        cmd[5:5] = ["--resume", "auto"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_pretraining_skips_counts_logs_and_stops_past_the_bound(bad_shards, tmp_path):
    shards, broken = bad_shards
    # within the bound: the run completes; data/bad_samples in log.jsonl; keys in bad_samples.jsonl
    done = _pretrain(tmp_path / "ok", shards, "data.max_bad_fraction=0.3")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "ok" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["data/bad_samples"] >= 4  # two bad samples per epoch, counted where the loader stands
    bad = [json.loads(line) for line in (tmp_path / "ok" / "bad_samples.jsonl").read_text().splitlines()]
    assert {r["key"] for r in bad} == set(broken) and all(r["rank"] == 0 for r in bad)

    # strict: a clear one-line error naming the key and shard, after a checkpoint of the step reached
    strict = _pretrain(tmp_path / "strict", shards, "data.max_bad_fraction=0")
    assert strict.returncode == 2, strict.stderr[-3000:]
    error = strict.stderr.strip().splitlines()[-1]
    assert "bad samples" in error and "demo-000000.tar" in error and any(k in error for k in broken), error
    assert "checkpoint" in error
    checkpoints = sorted((tmp_path / "strict" / "checkpoints").glob("step-*.pt"))
    assert checkpoints, "no checkpoint written before the error"
    state = torch.load(checkpoints[-1], weights_only=True)
    assert state["loader"][0]["counts"]["bad_samples"] >= 1  # resume keeps the counter
    assert (tmp_path / "strict" / "bad_samples.jsonl").read_text().strip()


def test_a_shard_renamed_away_under_a_running_reader_does_not_disturb_it(clean_shards, tmp_path):
    """DALI maps each shard once per process: a shard that goes missing after the first read (a
    network file system's brief hiccup, a replaced file) does not change the batches."""
    import shutil

    from crisscross.shards.loader import build_train_loader

    copy = tmp_path / "shards"
    shutil.copytree(clean_shards, copy)
    reference = build_train_loader(_data(clean_shards), batch_size=4, seed=0)
    loader = build_train_loader(_data(copy), batch_size=4, seed=0)
    want = [b["key"] for _ in range(2) for b in reference]
    got, tar = [], next(copy.glob("*.tar"))
    for _epoch in range(2):
        for batch in loader:
            got.append(batch["key"])
            if not got[1:]:
                tar.rename(tar.with_name("elsewhere"))  # gone after the first batch
    assert got == want
