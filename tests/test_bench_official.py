"""``crisscross bench loader --official DIR`` runs the official CrissCross loader from a checkout of
github.com/pritamqu/CrissCross (tools/official_loader.py): the compatibility shims let the official
code run on today's torchvision and PyAV without changing either for the rest of the process, its
item has the official shapes, the stage profile and the DataLoader comparison reach the JSON, and a
directory without the official code is refused in one line.

The official code is never part of this repository: the tests read it from a local mirror of the
official repository (extracted into a temporary directory) and skip when there is none (CI)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

MIRROR = Path(os.environ.get("CRISSCROSS_OFFICIAL_MIRROR", "/work/.mirror/pritamqu+CrissCross/repo"))
STAGES = {"video_decode", "audio_decode", "video_aug", "audio_aug", "total"}


def crisscross(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "crisscross.tools.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CRISSCROSS_DEBUG": ""})


@pytest.fixture(scope="module")
def official_root(tmp_path_factory) -> Path:
    """The official code's Python files, extracted from the mirror (a bare git repository)."""
    if not (MIRROR / "HEAD").is_file():
        pytest.skip(f"no local mirror of github.com/pritamqu/CrissCross at {MIRROR} (set CRISSCROSS_OFFICIAL_MIRROR)")
    archive = subprocess.run(["git", f"--git-dir={MIRROR}", "archive", "--format=tar", "HEAD", "--", "crisscross/*.py"],
                             capture_output=True, check=True)  # Python files only: some data blobs are not mirrored
    root = tmp_path_factory.mktemp("official")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    from crisscross.tools.bench_loader import _source_paths
    from crisscross.tools.demo_data import generate_demo_clips

    folder = tmp_path_factory.mktemp("official_src")
    generate_demo_clips(folder, num_classes=2, clips_per_class=1, seconds=4.0, fps=25, size=(160, 120),
                        sample_rate=44100, seed=0)
    return _source_paths(folder / "manifest.csv")


# ----------------------------------------------------------------------------- no official code needed


def test_a_directory_without_the_official_code_is_refused(tmp_path):
    from crisscross.errors import UserError
    from crisscross.tools.official_loader import OfficialCodeNotFound, OfficialDataset, official_train_dir

    (tmp_path / "crisscross" / "train").mkdir(parents=True)  # close, but no datasets package
    with pytest.raises(OfficialCodeNotFound, match="not a checkout of github.com/pritamqu/CrissCross") as caught:
        official_train_dir(tmp_path)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    with pytest.raises(OfficialCodeNotFound):
        OfficialDataset(tmp_path, ["x.mp4"])


def test_bench_loader_refuses_it_in_one_line_before_any_work(tmp_path):
    proc = crisscross("bench", "loader", "--official", str(tmp_path), "--workdir", str(tmp_path / "work"),
                      cwd=tmp_path, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("crisscross bench loader: error: "), proc.stderr
    assert str(tmp_path) in lines[0] and "crisscross/train/datasets" in lines[0]
    assert not (tmp_path / "work").exists()  # refused before generating sources


def test_bench_loader_thread_defaults():
    """Ours: a DALI thread more than the cores (the calling thread sleeps while the pool works);
    the anchor and the official loader: one worker per core."""
    import argparse

    from crisscross.tools.bench_loader import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    cores = os.cpu_count() or 1
    assert (args.threads, args.workers, args.official) == (cores + 1, cores, None)
    assert "cores + 1" in parser.format_help()


# ----------------------------------------------------------------------------- against the official code


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:TypedStorage is deprecated")  # official code
def test_official_item_and_scoped_shims(official_root, sources):
    """The official item has the official shapes; the shims do not leak into torchvision or PyAV."""
    import av
    import av.audio.resampler
    import torchvision.transforms._functional_pil as pil

    from crisscross.tools import official_loader

    resampler_before, resize_before, level_before = av.audio.resampler.AudioResampler, pil.resize, av.logging.get_level()
    official = official_loader.load_official(official_root)
    dataset = official_loader.official_dataset(official, sources)
    item = dataset[1]
    assert tuple(item["frames"].shape) == (2, 3, 8, 112, 112)
    assert tuple(item["audio"].shape) == (2, 1, 80, 201)
    assert all(bool(v.isfinite().all()) and v.dtype.is_floating_point for v in item.values())
    assert not bool((item["frames"][0] == item["frames"][1]).all())  # two views, two draws
    assert len(official_loader.OfficialDataset(official_root, sources)) == len(dataset)
    # the reader with the pre-PyAV-9 resampler: the 3 s window, 16 kHz mono, scaled to [-1, 1]
    with av.open(sources[0]) as container:
        samples, rate = official.av_wrappers.av_laod_audio(container, audio_fps=16000, start_time=0.5, duration=3.0)
    assert samples.shape == (1, 48000) and rate == 16000 and 0 < abs(samples).max() <= 1
    # scoped: PyAV, torchvision and OpenCV are what they were for everything else
    assert av.audio.resampler.AudioResampler is resampler_before and pil.resize is resize_before
    assert av.logging.get_level() == level_before
    assert "cv2" not in sys.modules or hasattr(sys.modules["cv2"], "__file__")  # OpenCV or nothing, no stand-in
    assert str(official_loader.official_train_dir(official_root)) not in sys.path


def test_official_stage_profile(official_root, sources):
    from crisscross.tools.official_loader import stage_profile

    stages = stage_profile(official_root, sources, clips=2)
    assert list(stages) == ["video_decode", "audio_decode", "video_aug", "audio_aug", "total"]
    assert all(stages[name] > 0 for name in STAGES)
    assert sum(stages[name] for name in STAGES - {"total"}) <= stages["total"] + 0.5  # stages inside the item


def test_bench_loader_official_writes_the_comparison(official_root, tmp_path):
    proc = crisscross("bench", "loader", "--official", str(official_root), "--workdir", str(tmp_path / "work"),
                      "--clips", "4", "--batch-size", "4", "--batches", "2", "--repeats", "1", "--stage-clips", "4",
                      "--short-sides", "112", "--long-seconds", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    official = figures["official"]
    assert set(official) == {"clips_per_s", "cpu_ms_per_clip", "stage_cpu_ms_per_clip", "repeats"}
    assert official["clips_per_s"] > 0 and official["cpu_ms_per_clip"] > 0
    assert set(official["stage_cpu_ms_per_clip"]) == STAGES
    (pair,) = official["repeats"]
    assert pair["official_cpu_ms_per_clip"] == pytest.approx(official["cpu_ms_per_clip"], abs=0.01)
    assert figures["anchor_vs_official_cpu"] == pytest.approx(
        pair["anchor_cpu_ms_per_clip"] / pair["official_cpu_ms_per_clip"], rel=0.01)
    assert figures["config"]["official"] == str(official_root)
    assert figures["ours_vs_official"]["cpu_ratio"] == pytest.approx(
        official["cpu_ms_per_clip"] / figures["ours_cpu_ms_per_clip"], rel=0.01)
    assert figures["ours_vs_official"]["ratio"] == pytest.approx(figures["ours"] / official["clips_per_s"], rel=0.01)
    assert figures["config"]["threads"] == (os.cpu_count() or 1) + 1
    assert any(line.startswith("official loader (") for line in proc.stdout.splitlines())
