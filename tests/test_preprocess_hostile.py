"""Hostile and malformed inputs (issue 16): every bad row becomes an error row with a reason, the
build finishes, stays local, and memory/time per item stay bounded. Each case is a small
generated file."""

from __future__ import annotations

import csv
import hashlib
import http.server
import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from crisscross.preprocess import media
from crisscross.preprocess.build import build_shards, merge
from crisscross.preprocess.plan import BuildConfig
from crisscross.preprocess.sources import load_sources
from crisscross.shards.inspect import verify_dataset
from crisscross.shards.reader import read_dataset
from crisscross.tools.demo_data import write_av_file

GRID = "videos/grid_lipnet/bbaf2n.mpg"
GRID2 = "videos/grid_lipnet/brbk7n.mpg"


def _reasons(out: Path) -> dict[str, str]:
    return {row["source"]: row["reason"] for row in read_dataset(out).errors}


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_non_finite_and_absurd_spans_become_error_rows(shared_data, tmp_path):
    os.symlink(shared_data / GRID, tmp_path / "a.mpg")
    spans = [("nan", "2"), ("0", "nan"), ("inf", ""), ("-inf", "1"), ("0", "1e300"), ("2", "1"), ("abc", "1"),
             ("-1", "1")]
    rows = [{"path": "a.mpg", "start": s, "end": e} for s, e in spans] + [{"path": "a.mpg", "start": "0.5", "end": "2.5"}]
    _write_csv(tmp_path / "list.csv", rows)
    out = tmp_path / "ds"
    stats = build_shards(tmp_path / "list.csv", out, samples_per_shard=3, workers=1, progress=False, item_timeout_s=60)
    info = read_dataset(out)
    assert [e["reason"] for e in info.errors] == ["bad_span"] * len(spans)
    assert all(e["detail"] for e in info.errors)
    assert [r["source"] for r in info.manifest] == ["a.mpg#0.5-2.5"] and stats.samples == 1
    _strict_json(out / "dataset.json")  # no NaN / Infinity in any JSON the build writes
    _strict_json(out / "_plan.json")


def test_a_video_only_source_with_an_infinite_end_is_not_kept(shared_data, tmp_path):
    """Used to become a sample of duration inf ('Infinity' in dataset.json)."""
    from crisscross.tools.demo_data import write_index_clip

    write_index_clip(tmp_path / "v.mp4", seconds=2.0, fps=25, with_audio=False)
    _write_csv(tmp_path / "list.csv", [{"path": "v.mp4", "start": "0", "end": "-inf"}])
    out = tmp_path / "ds"
    build_shards(tmp_path / "list.csv", out, progress=False)
    assert list(_reasons(out).values()) == ["bad_span"]
    assert _strict_json(out / "dataset.json")["counts"]["seconds"] == 0


def _duration_bomb(path: Path, seconds: float) -> None:
    """A small MJPEG Matroska whose header claims ``seconds`` (the Segment Duration element)."""
    pictures = (np.full((32, 32, 3), 10 * k, np.uint8) for k in range(16))
    write_av_file(path, pictures, None, fps=16, sample_rate=16000, video_codec="mjpeg")
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, 8-byte float, in TimestampScale units (1 ms)
    assert at > 0
    data[at + 3:at + 11] = struct.pack(">d", seconds * 1000.0)
    path.write_bytes(bytes(data))


def test_a_duration_bomb_is_an_error_row_not_a_dead_build(shared_data, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _duration_bomb(src / "bomb.mkv", 1e12)
    assert media.probe(str(src / "bomb.mkv"))["duration"] == pytest.approx(1e12)
    os.symlink(shared_data / GRID, src / "fine.mpg")
    out = tmp_path / "ds"
    stats = build_shards(src, out, clip_seconds=1.0, progress=False)  # used to plan 1e12 clips: MemoryError
    assert _reasons(out) == {"bomb.mkv": "absurd_duration"}
    assert stats.samples >= 2 and {r["source"] for r in read_dataset(out).manifest} == {"fine.mpg"}


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        type(self).requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port, _Recorder.requests
    server.shutdown()
    server.server_close()


def test_file_names_that_look_like_urls_never_reach_the_network(shared_data, tmp_path, http_server, monkeypatch):
    port, requests = http_server
    src = tmp_path / "src"
    src.mkdir()
    url_name = f"http:127.0.0.1:{port}"  # FFmpeg would fetch http://127.0.0.1:<port>/ for this name
    os.symlink(shared_data / GRID, src / url_name)
    os.symlink(shared_data / GRID2, src / "concat:x.mpg|y.mpg")
    (src / "list.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\nhttp://127.0.0.1:{port}/seg.ts\n"
                                   "#EXTINF:3,\nhttp:127.0.0.1:%d\n#EXT-X-ENDLIST\n" % port)
    monkeypatch.chdir(src)  # where a relative name would resolve
    out = tmp_path / "ds"
    build_shards(src, out, clip_seconds=1.0, workers=1, progress=False)
    assert requests == []
    local = hashlib.sha256((shared_data / GRID).read_bytes()).hexdigest()
    from crisscross.shards.reader import iter_samples

    metas = {s.meta["source"]: s.meta for s in iter_samples(out, video=False)}
    assert metas[url_name]["source_sha256"] == local  # the sample is the local file's bytes
    assert "concat:x.mpg|y.mpg" in metas
    assert _reasons(out) == {"list.m3u8": "not_media"}
    assert verify_dataset(out) == []


def test_job_arrays_give_the_same_dataset_from_any_working_directory(shared_data, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "v").mkdir(parents=True)
    for rel in (GRID, GRID2):
        os.symlink(shared_data / rel, data / "v" / Path(rel).name)
    _write_csv(data / "list.csv", [{"path": f"v/{Path(rel).name}", "label": str(i)} for i, rel in enumerate((GRID, GRID2))])
    opts = dict(clip_seconds=1.0, samples_per_shard=2, progress=False)
    monkeypatch.chdir(tmp_path)
    build_shards("data/list.csv", tmp_path / "ref", **opts)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to here, v/... does not exist
    build_shards("../data/list.csv", tmp_path / "arr", num_tasks=2, task_index=0, **opts)
    monkeypatch.chdir(data)
    build_shards("list.csv", tmp_path / "arr", num_tasks=2, task_index=1, **opts)
    merge(tmp_path / "arr")
    ref, arr = read_dataset(tmp_path / "ref"), read_dataset(tmp_path / "arr")
    assert arr.errors == [] and len(arr.manifest) == len(ref.manifest) >= 4
    assert [r["sha256"] for r in arr.manifest] == [r["sha256"] for r in ref.manifest]


def test_a_non_utf8_file_name_is_an_error_row(shared_data, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(shared_data / GRID, os.path.join(os.fsencode(src), b"caf\xe9.mpg"))
    os.symlink(shared_data / GRID2, src / "fine.mpg")
    out = tmp_path / "ds"
    build_shards(src, out, progress=False)
    assert _reasons(out) == {"caf\\xe9.mpg": "bad_filename"}
    assert [r["source"] for r in read_dataset(out).manifest] == ["fine.mpg"]


def test_samples_stay_within_the_decode_window(shared_data, tmp_path, monkeypatch):
    """A sample without an end longer than the window is too_long; clips far apart are decoded in
    several windows and give the same clips as one pass (video bytes identical; the audio
    resampler sees a different stretch, so an edge sample may differ by one step)."""
    from crisscross.shards.reader import iter_samples

    src = tmp_path / "src"
    src.mkdir()
    os.symlink(shared_data / "videos/torchcodec/nasa_13013.mp4", src / "nasa.mp4")  # ~13 s
    one_pass = build_shards(src, tmp_path / "one", clip_seconds=2.0, progress=False)
    monkeypatch.setattr(media, "DECODE_WINDOW_S", 5.0)  # inherited by the forked workers
    windows = build_shards(src, tmp_path / "win", clip_seconds=2.0, progress=False)
    assert one_pass.samples == windows.samples > 3
    one = {s.key: s for s in iter_samples(tmp_path / "one", video=False)}
    win = {s.key: s for s in iter_samples(tmp_path / "win", video=False)}
    assert sorted(one) == sorted(win)
    for key, sample in one.items():
        assert sample.raw["video.mp4"] == win[key].raw["video.mp4"]
        assert (sample.index == win[key].index).all()
        assert np.abs(sample.audio - win[key].audio).max() <= 2 / 32768
    build_shards(src, tmp_path / "whole", progress=False)  # no --clip-seconds: one 13 s sample > 5 s
    assert _reasons(tmp_path / "whole") == {"nasa.mp4": "too_long"}
    with pytest.raises(ValueError, match="clip_seconds"):
        BuildConfig(clip_seconds=6.0).validate()


@pytest.mark.parametrize("content, suffix, message", [
    ("path,fold\na.mpg,x\n", ".csv", r"row 1: fold must be an integer"),
    ('{"path": "a.mpg"}\n{"path": \n', ".jsonl", r"line 2 is not JSON"),
    (b"path,label\na.mpg,caf\xe9\n", ".csv", r"not UTF-8"),
    (b"PAR1 this is not parquet", ".parquet", r"not a readable parquet file"),
    ("label\nx\n", ".csv", r"needs a 'path' column"),
])
def test_a_malformed_manifest_is_one_clear_error_naming_the_file(tmp_path, content, suffix, message):
    path = tmp_path / f"list{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_sources(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("field, value", [("fps", 0), ("short_side", -1), ("jpeg_qscale", 99), ("min_seconds", float("nan")),
                                          ("item_timeout_s", -1.0), ("samples_per_shard", 0), ("clip_seconds", float("inf"))])
def test_build_options_are_range_checked(field, value):
    with pytest.raises(ValueError, match=field):
        BuildConfig(**{field: value}).validate()


@pytest.mark.parametrize("override, key", [("data.shuffle_buffer=2147483648", "data.shuffle_buffer"),
                                           ("run.max_steps=-1", "run.max_steps"), ("optim.lr=-1e-4", "optim.lr"),
                                           ("optim.lr=.nan", "optim.lr"), ("run.dir=/", "run.dir"),
                                           ("optim.betas=[0.9,1.5]", "optim.betas")])
def test_training_options_are_range_checked(override, key):
    from crisscross.train.config import resolve_config

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        resolve_config("demo", [override])


def test_a_file_ffmpeg_refuses_is_never_hashed(tmp_path, monkeypatch):
    """A 20 GiB sparse file of zeros: refused from its header (not_media), not read whole first."""
    from crisscross.preprocess import samples
    from crisscross.preprocess.plan import SampleSpec
    from crisscross.preprocess.sources import SourceItem

    big = tmp_path / "huge.mp4"
    with open(big, "wb") as f:
        f.truncate(20 << 30)

    def no_hash(path):
        raise AssertionError(f"hashed {path} before checking its format")

    monkeypatch.setattr(samples, "_sha256", no_hash)
    item = SourceItem(str(big), "huge.mp4")
    result = samples.decode_group(item, [SampleSpec("k", item, 0, 0.0, None)], BuildConfig())
    assert isinstance(result, media.MediaError) and result.reason == "not_media"


def test_verify_caps_the_decoded_frame_size(shared_data, tmp_path, monkeypatch):
    from crisscross.shards import reader

    out = tmp_path / "ds"
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(shared_data / GRID, src / "a.mpg")
    build_shards(src, out, progress=False)
    monkeypatch.setattr(reader, "MAX_FRAME_PIXELS", 100 * 100)  # the 112-px-high clip is over it
    problems = verify_dataset(out)
    assert problems and all("exceeds 10000 pixels" in p for p in problems)
