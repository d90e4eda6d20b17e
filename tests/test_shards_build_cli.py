"""`crisscross shards build|verify` as a tool (issue 17): Ctrl-C stops a build and a rerun
completes it identically; outputs that cannot be clobbered; checks before work; verify reports
every problem of every shard. Also bounded MP4 sample tables (issue 16)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crisscross.preprocess.build import build_shards
from crisscross.tools.cli import main

BUNNY = "videos/moviepy/big_buck_bunny_0_30.webm"  # 720p VP8: slow enough to interrupt
GRID = "videos/grid_lipnet/bbaf2n.mpg"


def _digests(out: Path) -> dict[str, str]:
    files = [p for p in sorted(out.rglob("*")) if p.is_file()]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "crisscross.tools.cli", "shards", "build", *args, "--no-progress"]


@pytest.fixture(scope="module")
def slow_src(shared_data, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("slow")
    for i in range(4):
        os.symlink(shared_data / BUNNY, d / f"b{i}.webm")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_the_build_and_a_rerun_completes_it(slow_src, tmp_path, workers):
    out = tmp_path / "ds"
    args = _cli(str(slow_src), "--out", str(out), "--samples-per-shard", "1", "--workers", str(workers))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("_parts/*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # interrupt once a shard is complete and others are being written
    assert proc.poll() is None, "the build finished before it could be interrupted"
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert proc.returncode != 0
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err
    left = {p.name for p in out.iterdir()}
    assert not [n for n in left if ".tmp-" in n] and not list((out / "_parts").glob(".*"))
    parts = {p.stem for p in (out / "_parts").glob("*.json")}
    assert {n.split("-")[1].split(".")[0] for n in left if n.endswith(".tar")} <= parts  # no tar without its part
    assert len(parts) < 4
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    reference = tmp_path / "ref"
    build_shards(slow_src, reference, samples_per_shard=1, workers=2, progress=False)
    assert _digests(out) == _digests(reference)


def test_out_must_be_new_empty_or_the_same_build(shared_data, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(shared_data / GRID, src / "a.mpg")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["shards", "build", str(src), "--out", str(foreign), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(os.listdir(foreign)) == ["notes.txt"]
    assert main(["shards", "build", str(src), "--out", str(src / "shards"), "--no-progress"]) == 2
    assert "inside the input folder" in capsys.readouterr().err and sorted(os.listdir(src)) == ["a.mpg"]
    out = tmp_path / "ds"
    assert main(["shards", "build", str(src), "--out", str(out), "--no-progress"]) == 0
    assert main(["shards", "build", str(src), "--out", str(out), "--no-progress"]) == 0  # resume: same build
    assert main(["shards", "build", str(src), "--out", str(out), "--fps", "8", "--no-progress"]) == 2
    assert "other parameters" in capsys.readouterr().err


def test_no_media_and_a_wrong_input_fail_before_creating_anything(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no media here")
    out = tmp_path / "ds"
    assert main(["shards", "build", str(empty), "--out", str(out), "--no-progress"]) == 2
    assert "no media found" in capsys.readouterr().err and not out.exists()
    assert main(["shards", "build", str(tmp_path / "typo"), "--out", str(out), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def test_esc10_layout_is_detected_and_a_single_label_warns(shared_data, tmp_path, capsys):
    from crisscross.preprocess.sources import load_sources

    items = load_sources(shared_data / "esc10")
    assert len({i.label for i in items}) == 10 and all(i.audio_only and i.fold >= 1 for i in items)
    assert not any(Path(i.path).name == "LICENSE" for i in items)
    src = tmp_path / "one_class"
    (src / "dog").mkdir(parents=True)
    os.symlink(shared_data / GRID, src / "dog" / "a.mpg")
    assert main(["shards", "build", str(src), "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    assert "warning: every source has the same label 'dog'" in capsys.readouterr().err


@pytest.fixture
def two_shards(shared_data, tmp_path) -> Path:
    src = tmp_path / "src"
    for i, name in enumerate(["bbaf2n.mpg", "brbk7n.mpg", "lbax4n.mpg", "lbbc2a.mpg"]):
        (src / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        os.symlink(shared_data / "videos/grid_lipnet" / name, src / f"c{i % 2}" / name)
    out = tmp_path / "ds"
    build_shards(src, out, samples_per_shard=2, progress=False)
    return out


def test_verify_reports_every_problem_of_every_shard(two_shards, capsys):
    import pyarrow.parquet as pq

    out = two_shards
    tars = sorted(out.glob("*.tar"))
    assert len(tars) == 2
    data = tars[0].read_bytes()
    tars[0].write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    victim = next(r for r in table if r["shard"] == tars[1].name)
    victim["split"] = "test"  # the manifest now disagrees with the sample's meta.json
    pq.write_table(pq.read_table(out / "manifest.parquet").from_pylist(table), out / "manifest.parquet")
    idx = tars[1].with_suffix(".idx")
    lines = idx.read_text().splitlines()
    lines[1] = lines[1].replace(" ", " x", 1)  # a malformed offset in the first sample's line
    idx.write_text("\n".join(lines) + "\n")
    code = main(["shards", "verify", str(out), "--no-decode"])
    printed = capsys.readouterr().out
    problems = [line for line in printed.splitlines() if line.startswith("PROBLEM:")]
    assert code != 0 and "Traceback" not in printed
    assert any(tars[0].name in p and "truncated" in p for p in problems)
    assert any("in manifest, not in any shard" in p for p in problems)  # the samples lost with the cut
    assert any(victim["key"] in p and "split" in p for p in problems)
    assert any(idx.name in p and "malformed" in p for p in problems)


def test_verify_checks_label_indices_against_dataset_labels(two_shards, capsys):
    out = two_shards
    dataset = json.loads((out / "dataset.json").read_text())
    dataset["labels"] = list(reversed(dataset["labels"]))
    (out / "dataset.json").write_text(json.dumps(dataset))
    assert main(["shards", "verify", str(out), "--no-decode"]) != 0
    assert "label_index" in capsys.readouterr().out


def test_a_damaged_dataset_json_is_one_line(two_shards, capsys):
    (two_shards / "dataset.json").write_text('{"shards": [')
    assert main(["shards", "verify", str(two_shards)]) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_an_mp4_sample_table_claiming_2_32_frames_is_an_mp4_error(two_shards):
    from crisscross.shards.mjpeg_frames import Mp4Error, frame_table
    from crisscross.shards.reader import iter_raw

    _, group = next(iter_raw(sorted(two_shards.glob("*.tar"))[0]))
    mp4 = bytearray(group["video.mp4"])
    offsets, _ = frame_table(np.frombuffer(bytes(mp4), np.uint8))
    at = mp4.find(b"stsz")
    mp4[at + 12:at + 16] = (2**32 - 1).to_bytes(4, "big")  # sample count (after version/flags, uniform size)
    with pytest.raises(Mp4Error, match="stsz claims"):
        frame_table(np.frombuffer(bytes(mp4), np.uint8))
    for box in (b"stco", b"stsc"):
        bad = bytearray(group["video.mp4"])
        at = bad.find(box)
        bad[at + 8:at + 12] = (2**32 - 1).to_bytes(4, "big")  # entry count
        with pytest.raises(Mp4Error):
            frame_table(np.frombuffer(bytes(bad), np.uint8))
    assert len(offsets) > 0


def test_the_loader_names_a_malformed_index_or_dataset_json(two_shards):
    from crisscross.shards.loader import ShardError, find_shards

    idx = sorted(two_shards.glob("*.idx"))[0]
    lines = idx.read_text().splitlines()
    lines[1] = lines[1].replace(" ", " x", 1)
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardError, match=f"index {idx} is malformed"):
        find_shards(two_shards, retry_delays=())
    (two_shards / "dataset.json").write_text("{")
    with pytest.raises(ShardError, match="dataset.json: not valid JSON"):
        find_shards(two_shards)
