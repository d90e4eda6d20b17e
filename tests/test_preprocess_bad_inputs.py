"""Every kind of bad input ends up in errors.parquet with a reason; the good ones are all sharded."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from crisscross.preprocess.build import build_shards
from crisscross.shards.inspect import verify_dataset
from crisscross.shards.reader import read_dataset
from crisscross.tools.demo_data import write_av_file, write_index_clip

GRID = "videos/grid_lipnet/bbaf2n.mpg"
ESC = "esc10/audio/1-100032-A-0.flac"


def _write_mjpeg(path: Path, width: int, height: int, frames: int = 20) -> None:
    pictures = (np.full((height, width, 3), 8 * k, np.uint8) for k in range(frames))
    write_av_file(path, pictures, None, fps=16, sample_rate=16000, video_codec="mjpeg")


def _make_inputs(shared: Path, d: Path) -> tuple[list[str], dict[str, str]]:
    """Returns (manifest paths, expected error reason per path)."""
    good = {
        "it's a \"quoted\" näme ü.mpg": shared / GRID,  # quotes, spaces, non-ASCII
        "dog bark (1).flac": shared / ESC,  # audio-only source, kept as modality "a"
    }
    for name, target in good.items():
        os.symlink(target, d / name)
    write_index_clip(d / "video only.mp4", seconds=2.0, fps=25, with_audio=False)  # kept as "v"
    bunny = (shared / "videos/moviepy/big_buck_bunny_0_30.webm").read_bytes()
    (d / "truncated.webm").write_bytes(bunny[: len(bunny) // 4])  # header says 30 s, ~7 s decode
    nasa = (shared / "videos/torchcodec/nasa_13013.mp4").read_bytes()
    (d / "cut_short.mp4").write_bytes(nasa[: len(nasa) // 3])
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video at all\n" * 20)
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "still.png")
    write_index_clip(d / "too short.mp4", seconds=0.5, fps=25)
    _write_mjpeg(d / "sliver.mkv", 320, 16)  # 20:1, not a real picture
    (d / "a_folder.mp4").mkdir()
    paths = [*good, "video only.mp4", "truncated.webm", "cut_short.mp4", "empty.mp4", "notes.mp4", "still.png",
             "too short.mp4", "sliver.mkv", "a_folder.mp4", "does not exist.mp4"]
    expected = {"truncated.webm": "truncated", "empty.mp4": "empty_file", "notes.mp4": "not_media",
                "still.png": "image_file", "too short.mp4": "too_short", "sliver.mkv": "absurd_resolution",
                "a_folder.mp4": "missing", "does not exist.mp4": "missing"}
    return paths, expected


@pytest.fixture(scope="module")
def bad_set(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    paths, expected = _make_inputs(shared_data, d)
    manifest = d / "list.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i, p in enumerate(paths):
            writer.writerow([p, f"class{i % 2}", "train"])
    return manifest, paths, expected


def test_bad_inputs_are_reported_and_good_ones_kept(bad_set, tmp_path):
    manifest, paths, expected = bad_set
    out = tmp_path / "ds"
    stats = build_shards(manifest, out, samples_per_shard=4, workers=2, progress=False)
    info = read_dataset(out)
    reasons = {row["source"]: row["reason"] for row in info.errors}
    for path, reason in expected.items():
        assert reasons.get(path) == reason, (path, reasons.get(path), [e for e in info.errors if e["source"] == path])
    # cut_short.mp4: whatever FFmpeg makes of a third of an MP4, it is an error, never a crash
    assert "cut_short.mp4" in reasons
    kept = {row["source"]: row["modalities"] for row in info.manifest}
    assert kept == {"it's a \"quoted\" näme ü.mpg": "av", "dog bark (1).flac": "a", "video only.mp4": "v"}
    assert stats.samples + stats.errors == len(paths)  # nothing lost
    assert all(e["detail"] for e in info.errors)  # every reason comes with the details
    assert verify_dataset(out) == []


def test_require_av_rejects_single_modality_sources(bad_set, tmp_path):
    manifest, _, _ = bad_set
    out = tmp_path / "av"
    build_shards(manifest, out, samples_per_shard=20, require="av", progress=False)
    info = read_dataset(out)
    reasons = {row["source"]: row["reason"] for row in info.errors}
    assert reasons["dog bark (1).flac"] == "no_video" and reasons["video only.mp4"] == "no_audio"
    assert [row["modalities"] for row in info.manifest] == ["av"]


def test_a_decode_that_runs_too_long_becomes_a_timeout_error(shared_data, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(shared_data / "videos/moviepy/big_buck_bunny_0_30.webm", src / "slow.webm")
    os.symlink(shared_data / ESC, src / "fine.flac")
    out = tmp_path / "ds"
    build_shards(src, out, item_timeout_s=0.05, progress=False)  # 30 s of 720p VP8 takes longer
    info = read_dataset(out)
    assert [(e["source"], e["reason"]) for e in info.errors] == [("slow.webm", "timeout")]
    assert [r["source"] for r in info.manifest] == ["fine.flac"]  # the worker went on


@pytest.mark.parametrize("workers", [1, 2])
def test_a_decoder_crash_kills_no_build(shared_data, tmp_path, monkeypatch, workers):
    """FFmpeg cannot be made to segfault on demand, so the crash is injected: decoding one file
    kills its process with SIGSEGV. The pool loses a worker, rebuilds the shards left with one
    process per source, and the crashing file becomes an error row."""
    import faulthandler
    import signal

    from crisscross.preprocess import media

    real_decode = media.decode_source

    def crashing_decode(path, *args, **kwargs):
        if path.endswith("crash.mpg"):
            faulthandler.disable()  # pytest's traceback dump is noise for an intended crash
            os.kill(os.getpid(), signal.SIGSEGV)
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(media, "decode_source", crashing_decode)  # inherited by forked workers
    src = tmp_path / "src"
    src.mkdir()
    for name in ["a.mpg", "crash.mpg", "b.mpg", "c.mpg"]:
        os.symlink(shared_data / GRID, src / name)
    out = tmp_path / "ds"
    stats = build_shards(src, out, samples_per_shard=1, workers=workers, progress=False)
    info = read_dataset(out)
    assert [(e["source"], e["reason"]) for e in info.errors] == [("crash.mpg", "decoder_crashed")]
    assert sorted(r["source"] for r in info.manifest) == ["a.mpg", "b.mpg", "c.mpg"]
    assert stats.samples == 3 and verify_dataset(out) == []
