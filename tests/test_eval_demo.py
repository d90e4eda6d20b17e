"""Evaluators on small generated demo shards (3 s clips, 4 classes x 4 clips) with the tiny model.

* finetuning: a run stopped after one epoch (``max_epochs_this_run``, as a time-sliced or killed
  job would) and resumed for the second must end exactly where an uninterrupted run ends;
* fusion and retrieval run through the real DALI loader and write consistent rows and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crisscross.evaluate.config import load_config
from crisscross.evaluate.finetune import run_finetune
from crisscross.evaluate.fusion import run_fusion
from crisscross.evaluate.pipeline import run_retrieval
from crisscross.train.checkpoint import find_latest, list_checkpoints, load_checkpoint

OVERRIDES = [
    "model=tiny",
    "frames=4",
    "crop=48",
    "batch_size=8",
    "test_pass.clips_per_sample=2",
    "finetune.epochs=2",
    "finetune.batch_size=8",
    "finetune.lr=0.01",
    "finetune.milestones=[1]",
    "finetune.clips_per_sample=1",
    "finetune.shuffle_buffer=8",
]


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory, demo_shards_builder) -> Path:
    return demo_shards_builder(tmp_path_factory.mktemp("demo"), num_classes=4, clips_per_class=4, seconds=3.0, workers=2)


def test_finetune_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(demo_shards: Path, tmp_path: Path):
    straight = run_finetune("random", demo_shards, load_config("demo", OVERRIDES), tmp_path / "straight")

    sliced_dir = tmp_path / "sliced"
    first = run_finetune("random", demo_shards, load_config("demo", OVERRIDES + ["finetune.max_epochs_this_run=1"]), sliced_dir)
    assert json.loads(first.read_text())["rows"] == []  # stopped early: no number yet
    assert [step for step, _ in list_checkpoints(sliced_dir / "test")] == [1]
    resumed = run_finetune("random", demo_shards, load_config("demo", OVERRIDES), sliced_dir)

    a = load_checkpoint(find_latest(tmp_path / "straight" / "test"))
    b = load_checkpoint(find_latest(sliced_dir / "test"))
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] > 0
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    rows_a, rows_b = json.loads(straight.read_text())["rows"], json.loads(resumed.read_text())["rows"]
    assert len(rows_a) == 1 and rows_a[0]["value"] == rows_b[0]["value"]
    assert rows_a[0]["task"] == "finetune" and rows_a[0]["protocol"].startswith("finetune SGD, last epoch")
    assert rows_a[0]["extra"]["test_samples"] == 4


def test_fusion_concatenates_both_modalities_and_scores_with_the_svm(demo_shards: Path, tmp_path: Path):
    cfg = load_config("demo", ["frames=4", "crop=48", "train_pass.clips_per_sample=2", "test_pass.clips_per_sample=2"])
    payload = json.loads(run_fusion("random", demo_shards, cfg, tmp_path / "fusion").read_text())
    honest = [r for r in payload["rows"] if "comparison only" not in r["protocol"]]
    assert len(honest) == 1 and honest[0]["task"] == "fusion" and honest[0]["modality"] == "audio+video"
    # tiny model: video map [64, 1, 2, 2] pooled (1,2,2) -> 64; audio map [64, 3, 7] pooled (1,4) in
    # ceil mode -> 64 * 3 * 2 (time windows 0-3 and 4-6: every column reaches the feature)
    assert honest[0]["extra"]["feature_dim"] == 64 + 64 * 3 * 2
    assert 0.0 <= honest[0]["value"] <= 1.0 and honest[0]["extra"]["test_samples"] == 4


def test_retrieval_rows_cover_every_direction_and_plots_are_written(demo_shards: Path, tmp_path: Path):
    cfg = load_config("demo", ["frames=4", "crop=48", "test_pass.clips_per_sample=2"])
    out = tmp_path / "retrieval"
    rows = json.loads(run_retrieval("random", demo_shards, cfg, out).read_text())["rows"]
    got = {(r["modality"], r["metric"]) for r in rows}
    # 12 training samples: R@20 cannot be served and is left out; cross-modal galleries are the 4 test samples
    assert got == {("video->video", "R@1"), ("video->video", "R@5"), ("audio->audio", "R@1"), ("audio->audio", "R@5"),
                   ("video->audio", "R@1"), ("audio->video", "R@1")}
    for r in rows:
        assert 0.0 <= r["value"] <= 1.0
        if r["metric"] == "R@5":
            assert r["value"] >= next(x["value"] for x in rows if x["modality"] == r["modality"] and x["metric"] == "R@1")
    for name in ("retrieval_video_video.png", "retrieval_audio_audio.png", "tsne_video.png", "tsne_audio.png"):
        assert (out / name).stat().st_size > 1000, name
