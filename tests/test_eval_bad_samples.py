"""Bad samples in the evaluation loaders (issue 13): screened out before the DALI graph, listed in
results.json, bounded by ``loader.max_bad_fraction`` (0 = strict).

Shards are built from generated demo clips; in a copy, one sample's JPEG frames are zeroed inside
an intact MP4 (the decoder cannot read them) and another sample's MP4 header is overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crisscross.shards.loader import BadSampleLimitError

OVERRIDES = ["model=tiny", "modality=video", "frames=4", "crop=48", "batch_size=8", "classifier=svm",
             "train_pass.clips_per_sample=1", "test_pass.clips_per_sample=2", "plots=false"]


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory, demo_shards_builder) -> Path:
    return demo_shards_builder(tmp_path_factory.mktemp("eval_bad"), num_classes=4, clips_per_class=4, seconds=3.0,
                               workers=1)


def _zero_frames(tar: Path, offset: int, size: int) -> None:
    with open(tar, "r+b") as handle:  # every JPEG frame zeroed inside an intact MP4
        handle.seek(offset)
        payload = bytearray(handle.read(size))
        start = payload.find(b"mdat") + 4
        end = payload.find(b"moov") if payload.find(b"moov") > start else len(payload)
        payload[start:end] = bytes(end - start)
        handle.seek(offset)
        handle.write(payload)


@pytest.fixture(scope="module")
def bad_shards(clean_shards, tmp_path_factory, video_members) -> tuple[Path, dict[str, str]]:
    dst = tmp_path_factory.mktemp("eval_bad_copy") / "shards"
    shutil.copytree(clean_shards, dst)
    members = video_members(dst)
    (tar_a, key_a, off_a, size_a), (tar_b, key_b, off_b, _) = members[2], members[9]
    _zero_frames(tar_a, off_a, size_a)
    with open(tar_b, "r+b") as handle:  # the MP4's first box sizes: no sample table
        handle.seek(off_b)
        handle.write(b"\xff" * 64)
    return dst, {key_a: "SOI marker", key_b: "bad video"}


def test_the_clean_dataset_passes_the_screen(clean_shards):
    from crisscross.shards.loader import build_eval_loader

    loader = build_eval_loader(clean_shards, frames=4, crop=48, clips_per_sample=1, batch_size=8, num_threads=1,
                               max_bad_fraction=0.0)
    assert loader.skipped == [] and loader.num_samples == 16


def test_the_eval_loader_skips_and_lists_bad_samples(bad_shards):
    from crisscross.shards.loader import build_eval_loader

    shards, broken = bad_shards
    loader = build_eval_loader(shards, frames=4, crop=48, clips_per_sample=2, batch_size=8, num_threads=1,
                               max_bad_fraction=0.2)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == len(set(keys)) == 14 and not set(keys) & set(broken)
    assert {r["key"]: r["stage"] for r in loader.skipped} == {k: "screen" for k in broken}
    for record in loader.skipped:
        assert broken[record["key"]] in record["reason"] and record["shard"].endswith(".tar")


def test_strict_bound_names_the_keys(bad_shards):
    from crisscross.shards.loader import build_eval_loader

    shards, broken = bad_shards
    with pytest.raises(BadSampleLimitError, match="loader.max_bad_fraction=0 ") as info:
        build_eval_loader(shards, frames=4, crop=48, batch_size=8, num_threads=1, max_bad_fraction=0.0)
    assert all(key in str(info.value) for key in broken)
    # the bound counts the whole dataset: 2 of 16 is more than 0.1 allows
    with pytest.raises(BadSampleLimitError, match="2 of 16 samples"):
        build_eval_loader(shards, frames=4, crop=48, batch_size=8, num_threads=1, max_bad_fraction=0.1)


def test_linear_eval_completes_and_results_list_the_skipped_keys(bad_shards, tmp_path):
    from crisscross.evaluate.config import load_config
    from crisscross.evaluate.pipeline import run_linear

    shards, broken = bad_shards
    cfg = load_config("demo", OVERRIDES + ["loader.max_bad_fraction=0.2"])
    path = run_linear("random", shards, cfg, tmp_path / "linear")
    payload = json.loads(path.read_text())
    skipped = payload["run"]["skipped_samples"]
    assert sorted(r["key"] for r in skipped) == sorted(broken)
    assert payload["rows"], "no result rows"
    counted = [r["extra"] for r in payload["rows"] if "test_samples" in r["extra"]]
    # every partition covers the 14 good samples, the skipped ones in neither side
    assert counted and all(e["train_samples"] + e["test_samples"] == 14 for e in counted)


def test_linear_eval_with_a_strict_bound_stops_with_a_clear_error(bad_shards, tmp_path):
    from crisscross.evaluate.config import load_config
    from crisscross.evaluate.pipeline import run_linear

    shards, broken = bad_shards
    with pytest.raises(BadSampleLimitError, match="fail the evaluation loader's screen"):
        run_linear("random", shards, load_config("demo", OVERRIDES + ["loader.max_bad_fraction=0"]), tmp_path / "x")
    assert not (tmp_path / "x" / "results.json").exists()
