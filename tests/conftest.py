"""Shared fixtures: paths to the real data in ../shared/data and generated demo clips."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings (ESC-10, a few videos). Without them the tests that need them are
    skipped, with the reason (``pytest -rs`` lists them), rather than failing: README.md says how
    to get the data."""
    if not (SHARED_DATA / "esc10").is_dir() or not (SHARED_DATA / "videos").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (esc10/ and videos/; README.md, under Quick start, says how to get it)")
    return SHARED_DATA


def _descendants(root: int) -> list[int]:
    """Every process below ``root``, read from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="session")
def descendants():
    """``descendants(pid)``: the pids of every process below ``pid`` (fault-injection tests)."""
    return _descendants


def _video_members(shards: Path) -> list[tuple[Path, str, int, int]]:
    """(tar, key, payload offset, payload size) of every sample's ``video.mp4``, in shard order."""
    import tarfile

    out = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as handle:
            out += [(tar, m.name[: -len("video.mp4") - 1], m.offset_data, m.size)
                    for m in handle.getmembers() if m.name.endswith("video.mp4")]
    return out


@pytest.fixture(scope="session")
def video_members():
    """``video_members(shards_dir)``: where each sample's video payload lies (corruption tests)."""
    return _video_members


def _build_demo_shards(root: Path, *, num_classes: int, clips_per_class: int, seconds: float, **build) -> Path:
    """Generated demo clips (``tools/demo_data``) under ``root/clips``, built into ``root/shards``
    (every clip a sample, no errors)."""
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    manifest = generate_demo_clips(root / "clips", num_classes=num_classes, clips_per_class=clips_per_class, seconds=seconds)
    stats = build_shards(manifest, root / "shards", name="demo", progress=False, **build)
    assert stats.samples == num_classes * clips_per_class and stats.errors == 0
    return root / "shards"


@pytest.fixture(scope="session")
def demo_shards_builder():
    """``build(root, num_classes=, clips_per_class=, seconds=, **build_shards options) -> shards``."""
    return _build_demo_shards
