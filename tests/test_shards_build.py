"""Build shards from the real videos and ESC-10 audio; read them back with real readers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crisscross.preprocess.build import build_shards
from crisscross.shards import format as fmt
from crisscross.shards.reader import iter_samples, read_dataset

# a small but varied subset: MPEG-PS/mpeg1video+mp2, MP4 with two video + two audio streams,
# WebM/VP8+Vorbis at 720p, and audio-only FLAC
VIDEOS = ["grid_lipnet/bbaf2n.mpg", "grid_lipnet/brbk7n.mpg", "torchcodec/nasa_13013.mp4",
          "moviepy/big_buck_bunny_0_30.webm"]
AUDIO = ["1-100032-A-0.flac", "1-110389-A-0.flac"]


def _link_inputs(shared: Path, dst: Path) -> Path:
    for rel in VIDEOS:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(shared / "videos" / rel, dst / rel)
    (dst / "esc").mkdir()
    for name in AUDIO:
        os.symlink(shared / "esc10" / "audio" / name, dst / "esc" / name)
    return dst


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    src = _link_inputs(shared_data, tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("ds") / "ds"
    stats = build_shards(src, out, name="real", samples_per_shard=3, workers=2, progress=False)
    return src, out, stats


def test_every_good_input_is_sharded(built):
    src, out, stats = built
    info = read_dataset(out)
    assert stats.errors == 0, info.errors
    assert len(info.manifest) == len(VIDEOS) + len(AUDIO) == stats.samples
    assert len(info.shards) == 2 and all(p.exists() for p in info.shards)
    by_source = {row["source"]: row for row in info.manifest}
    for rel in VIDEOS:
        assert by_source[rel]["modalities"] == "av"
    for name in AUDIO:
        row = by_source[f"esc/{name}"]
        assert row["modalities"] == "a" and row["frames"] == 0 and row["audio_samples"] == 80000
        assert row["label"] == "esc"
    # the MPEG-PS GRID clip is 2.98 s of 25 fps video: 16 fps grid -> 48 frames, 3.0 s
    grid = by_source["grid_lipnet/bbaf2n.mpg"]
    assert grid["frames"] == 48 and grid["duration"] == pytest.approx(3.0)
    assert info.dataset["counts"]["samples"] == len(info.manifest)


def test_samples_decode_and_match_manifest(built):
    _, out, _ = built
    rows = read_dataset(out).by_key()
    seen = set()
    for sample in iter_samples(out):
        row = rows[sample.key]
        seen.add(sample.key)
        assert sample.field(fmt.Index.NUM_FRAMES) == row["frames"]
        assert sample.field(fmt.Index.NUM_AUDIO_SAMPLES) == row["audio_samples"] == len(sample.audio)
        assert sample.meta["source_sha256"] and sample.meta["label"] == row["label"]
        if row["frames"]:
            assert sample.frames.shape[0] == row["frames"]
            assert min(sample.frames.shape[1:3]) == 112 and sample.frames.shape[3] == 3
            assert sample.frames.std() > 5  # real pictures, not blank frames
        assert np.abs(sample.audio).max() > 0.01
    assert seen == set(rows)


def test_two_stream_source_uses_the_default_streams(built):
    _, out, _ = built
    sample = next(s for s in iter_samples(out, video=False) if s.meta["source"] == "torchcodec/nasa_13013.mp4")
    original = sample.meta["original"]
    assert original["video_streams"] == 2 and original["audio_streams"] == 2
    assert original["video_stream"] == 0 and original["audio_stream"] == 1
    assert original["width"] == 320 and original["sample_rate"] == 8000


def test_webdataset_library_reads_the_shards(built):
    import webdataset as wds

    _, out, _ = built
    info = read_dataset(out)
    keys = [s["__key__"] for s in wds.WebDataset([str(p) for p in info.shards], shardshuffle=False)]
    assert sorted(keys) == sorted(r["key"] for r in info.manifest)


def test_idx_matches_dali_wds2idx(built, tmp_path):
    _, out, _ = built
    for shard in read_dataset(out).shards:
        ref = tmp_path / (shard.stem + ".idx")
        subprocess.run([sys.executable, "-m", "wds2idx", str(shard), str(ref)], check=True, capture_output=True)
        assert ref.read_text() == shard.with_suffix(".idx").read_text()


def test_dali_reads_and_decodes_mjpeg_on_cpu(built):
    from nvidia.dali import fn, pipeline_def

    _, out, _ = built
    info = read_dataset(out)
    video_rows = [r for r in info.manifest if "v" in r["modalities"]]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, seed=0)
    def pipe():
        video, index, meta = fn.readers.webdataset(
            paths=[str(p) for p in info.shards], index_paths=[str(p.with_suffix(".idx")) for p in info.shards],
            ext=[fmt.VIDEO_EXT, fmt.INDEX_EXT, fmt.META_EXT], missing_component_behavior="skip",
            random_shuffle=False)
        return fn.decoders.video(video, device="cpu", frames=[0, 7, 3]), index, meta

    p = pipe()
    p.build()
    ours = {s.key: s.frames for s in iter_samples(out) if s.frames is not None}
    for _ in range(len(video_rows)):
        frames, index, meta = (np.array(x[0]) for x in p.run())
        key = json.loads(meta.tobytes())["key"]
        vec = index[fmt.NPY_HEADER_BYTES:].view("<f8")  # the index read without Python parsing
        assert frames.shape[0] == 3 and vec[fmt.Index.HAS_VIDEO] == 1
        assert vec[fmt.Index.NUM_FRAMES] == len(ours[key])
        # same JPEGs through libavcodec in DALI and in PyAV: same pictures
        diff = np.abs(frames.astype(int) - ours[key][[0, 7, 3]].astype(int))
        print(key, diff.mean(), diff.max())
        assert diff.mean() < 2.0


def test_rerun_gives_identical_bytes(built, tmp_path):
    src, out, _ = built
    again = tmp_path / "again"
    build_shards(src, again, name="real", samples_per_shard=3, workers=1, progress=False)
    a, b = _digests(out), _digests(again)
    a.pop("_plan.json"), b.pop("_plan.json")  # holds the input path only
    assert a == b


def test_cli_inspect_dumps_frames_and_audio_and_verify_catches_damage(built, tmp_path, capsys):
    import shutil

    import soundfile
    from PIL import Image

    from crisscross.tools.cli import main

    _, out, _ = built
    row = next(r for r in read_dataset(out).manifest if r["source"] == "grid_lipnet/bbaf2n.mpg")
    assert main(["shards", "inspect", str(out), "--key", row["key"], "--dump", str(tmp_path / "dump")]) == 0
    assert "6 samples in 2 shards" in capsys.readouterr().out
    pngs = sorted((tmp_path / "dump").glob("frame_*.png"))
    assert len(pngs) == row["frames"] and Image.open(pngs[0]).size == (140, 112)
    audio, rate = soundfile.read(tmp_path / "dump" / "audio.wav")
    assert rate == 16000 and len(audio) == row["audio_samples"]

    assert main(["shards", "verify", str(out)]) == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    shard = damaged / row["shard"]
    data = bytearray(shard.read_bytes())
    data[2000:2010] = b"\x00" * 10  # inside the first member's payload
    shard.write_bytes(bytes(data))
    assert main(["shards", "verify", str(damaged)]) == 1
    assert "PROBLEM" in capsys.readouterr().out
