"""Full finetuning of the tiny video model on the demo clips: a few steps, a checkpoint, resume.

A run stopped after one epoch (``max_epochs_this_run``, as a time-sliced or killed job would) and
resumed for the second must end exactly where an uninterrupted two-epoch run ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crisscross.evaluate.config import load_config
from crisscross.evaluate.finetune import run_finetune
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
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    clips = generate_demo_clips(tmp_path_factory.mktemp("demo_clips"), num_classes=4, clips_per_class=4, seconds=3.0)
    out = tmp_path_factory.mktemp("demo_shards")
    build_shards(clips, out, name="demo", workers=2, progress=False)
    return out


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
