"""The tar writer: byte-for-byte determinism, DALI index == wds2idx, and never a half file."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisscross.shards.reader import iter_raw
from crisscross.shards.writer import ShardWriter, idx_path_for

keys = st.from_regex(r"[A-Za-z0-9_]{1,30}", fullmatch=True)
payloads = st.binary(min_size=0, max_size=3000)
samples = st.lists(st.tuples(keys, st.dictionaries(st.sampled_from(["video.mp4", "audio.pcm", "index.npy", "meta.json"]),
                                                   payloads, min_size=1, max_size=4)),
                   min_size=1, max_size=6, unique_by=lambda s: s[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=samples)
def test_index_equals_wds2idx_and_members_read_back(tmp_path_factory, samples):
    d = tmp_path_factory.mktemp("w")
    writer = ShardWriter(d / "x-000000.tar")
    for key, comps in samples:
        writer.add(key, comps)
    writer.finish()
    ref = d / "ref.idx"
    subprocess.run([sys.executable, "-m", "wds2idx", str(d / "x-000000.tar"), str(ref)], check=True, capture_output=True)
    assert idx_path_for(d / "x-000000.tar").read_text() == ref.read_text()
    assert list(iter_raw(d / "x-000000.tar")) == [(k, c) for k, c in samples]


def test_same_samples_same_bytes_and_no_half_files(tmp_path):
    comps = {"video.mp4": b"v" * 1000, "index.npy": b"i" * 208, "meta.json": b"{}"}
    for name in ("a", "b"):
        w = ShardWriter(tmp_path / f"{name}-000000.tar")
        w.add("k1", comps)
        assert not (tmp_path / f"{name}-000000.tar").exists()  # only the temp name while writing
        w.add("k2", comps)
        w.finish()
    assert (tmp_path / "a-000000.tar").read_bytes() == (tmp_path / "b-000000.tar").read_bytes()
    aborted = ShardWriter(tmp_path / "c-000000.tar")
    aborted.add("k1", comps)
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-000000.idx", "a-000000.tar", "b-000000.idx", "b-000000.tar"]


def test_keys_that_webdataset_would_split_are_refused(tmp_path):
    w = ShardWriter(tmp_path / "x-000000.tar")
    for bad in ["a.b", "dir/name", ""]:
        with pytest.raises(ValueError):
            w.add(bad, {"meta.json": b"{}"})
    with pytest.raises(ValueError, match="empty shard"):
        w.finish()
