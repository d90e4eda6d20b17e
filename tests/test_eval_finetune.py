"""Full finetuning: device-safe accuracy, per-rank shard reading under torchrun, seeded shuffling.

* the accuracy comparison runs on the predictions' device (the old code compared GPU predictions
  with a CPU truth tensor; on the CPU the same mistake shows with the ``meta`` device);
* the evaluation loader gives rank r of W its own 1/W of the samples, disjoint and covering;
* a real ``torchrun --nproc-per-node 2`` (gloo) finetune reads a different part of the shards on
  each rank, counts every test sample exactly once, and reports what its saved model scores
  when evaluated again in one process;
* training passes are shuffled per epoch and per pass, one clip per video, the same for the same seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crisscross.evaluate.config import EvalConfig, load_config
from crisscross.evaluate.finetune import (
    FinetuneConfig,
    FinetuneModel,
    clip_batches,
    correct_predictions,
    merge_rank_results,
    sample_accuracy,
    steps_per_epoch,
    training_pass,
)
from crisscross.evaluate.pipeline import label_indices, open_run
from crisscross.shards.loader import build_eval_loader, rank_part
from crisscross.train.checkpoint import find_latest, load_checkpoint
from crisscross.train.distributed import DistEnv, resolve_device, setup_distributed

SMALL = ["model=tiny", "frames=4", "crop=48", "audio_seconds=2.0", "batch_size=8", "test_pass.clips_per_sample=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 demo clips (4 classes x 6; 2 per class are test samples) in one shard."""
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    clips = generate_demo_clips(tmp_path_factory.mktemp("clips"), num_classes=4, clips_per_class=6, seconds=3.0)
    out = tmp_path_factory.mktemp("shards")
    build_shards(clips, out, name="demo", workers=2, progress=False)
    return out


# ------------------------------------------------------------------------------ devices
def test_accuracy_is_compared_on_the_predictions_device():
    scores = torch.empty(4, 3, device="meta")  # stands for GPU predictions: not the CPU
    truth = [0, 1, 2, 0]
    with pytest.raises(RuntimeError, match="device"):
        _ = scores.argmax(dim=1) == torch.tensor(truth)  # the old comparison: truth on the CPU
    hits = correct_predictions(scores, truth)
    assert hits.device.type == "meta" and hits.shape == (4,) and hits.dtype == torch.bool
    cpu_scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    assert correct_predictions(cpu_scores, truth).tolist() == [True, True, False, False]


def test_device_settings_resolve_in_one_place(monkeypatch: pytest.MonkeyPatch):
    assert EvalConfig().device == "auto"  # as training: CUDA where present
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not one of"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun each rank takes cuda:LOCAL_RANK
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        setup_distributed("cuda:1")


# ------------------------------------------------------------------------------ per-rank reading
def test_eval_loader_ranks_read_disjoint_parts_that_cover_the_dataset(shards: Path):
    def keys(rank: int, world: int) -> list[str]:
        loader = build_eval_loader(shards, clips_per_sample=1, frames=4, crop=48, modalities=("video",),
                                   batch_size=5, rank=rank, world_size=world)
        return [k for batch in loader for k in batch["key"]]

    everything = keys(0, 1)
    assert len(everything) == len(set(everything)) == 24
    for world in (2, 3):
        parts = [keys(r, world) for r in range(world)]
        for r, part in enumerate(parts):
            start, end = rank_part(24, r, world)
            assert part == everything[start:end]  # the shard order, cut into contiguous parts
        assert sum(map(len, parts)) == 24 and set().union(*parts) == set(everything)


def test_rank_results_are_merged_with_every_test_sample_exactly_once():
    assert merge_rank_results([{"a": True, "b": False}, {"c": True}], {"a", "b", "c"}) == (2 / 3, 3)
    with pytest.raises(RuntimeError, match="rank 1"):
        merge_rank_results([{"a": True, "b": False}, {"b": False}], {"a", "b"})
    with pytest.raises(ValueError, match="1 of 3 test samples"):
        merge_rank_results([{"a": True}, {"b": True}], {"a", "b", "c"})


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def test_two_rank_torchrun_finetune_splits_the_shards_and_counts_each_test_sample_once(shards: Path, tmp_path: Path):
    out = tmp_path / "ft"
    sets = [*SMALL, "device=cpu", "finetune.epochs=2", "finetune.batch_size=8", "finetune.lr=0.01",
            "finetune.milestones=[1]", "finetune.clips_per_sample=2", "finetune.shuffle_buffer=8"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cli = ["-m", "crisscross.tools.cli", "eval", "finetune", "--checkpoint", "random", "--data", str(shards),
           "--config", "demo", "--out", str(out)]
    done = subprocess.run([*torchrun, *cli, *[a for s in sets for a in ("--set", s)]], env=_env(), timeout=600,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone reports

    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 1
    extra = rows[0]["extra"]
    assert extra["world_size"] == 2 and extra["test_samples"] == 8
    # each rank tested its own part (the old code had every rank read everything: [8, 8])
    assert sum(extra["test_samples_per_rank"]) == 8 and min(extra["test_samples_per_rank"]) > 0
    # 16 training videos; a rank reads at most its part (12 samples, some of them test samples)
    train = extra["train_samples_per_rank"]
    assert min(train) > 0 and max(train) <= 12 and sum(train) <= 16
    assert extra["steps"] > 0

    # the gathered number is what the saved model scores when tested again in one process
    cfg = load_config("demo", [*SMALL, "device=cpu"])
    ctx = open_run("random", shards, cfg)
    labels, classes = label_indices(ctx.manifest)
    model = FinetuneModel(ctx.encoders.video, len(classes), 0.0)
    state = load_checkpoint(find_latest(out / rows[0]["split"]))
    assert state["epoch"] == 2 and state["world_size"] == 2
    model.load_state_dict(state["model"])
    test_keys = set(ctx.partitions(("video",))[0].test_keys)
    loader = build_eval_loader(shards, clips_per_sample=2, sampling="uniform", frames=4, crop=48,
                               modalities=("video",), batch_size=8)
    assert sample_accuracy(model, loader, test_keys, labels) == (rows[0]["value"], 8)


# ------------------------------------------------------------------------------ shuffling
def _pass_keys(ctx, ft: FinetuneConfig, epoch: int, pass_index: int) -> tuple[list[str], torch.Tensor]:
    keys, videos = [], []
    for batch in training_pass(ctx, DistEnv(), ft, epoch, pass_index):
        keys += batch["key"]
        videos.append(batch["video"])
    return keys, torch.cat(videos)


def test_training_passes_are_shuffled_per_epoch_deterministically_one_clip_per_video(shards: Path):
    ctx = open_run("random", shards, load_config("demo", [*SMALL, "device=cpu"]))
    ft = FinetuneConfig(shuffle_buffer=16, batch_size=4)
    first, clips = _pass_keys(ctx, ft, epoch=0, pass_index=0)
    again, clips_again = _pass_keys(ctx, ft, epoch=0, pass_index=0)
    assert first == again and torch.equal(clips, clips_again)  # same seed: same order, same clips
    assert sorted(first) == sorted(set(first)) and len(first) == 24  # every video once per pass
    assert clips.shape[1] == 1  # one random clip per video
    orders = {tuple(first), tuple(_pass_keys(ctx, ft, 1, 0)[0]), tuple(_pass_keys(ctx, ft, 0, 1)[0])}
    assert len(orders) == 3  # the next epoch and the next pass read in other orders

    labels, _ = label_indices(ctx.manifest)
    train_keys = set(ctx.partitions(("video",))[0].train_keys)
    seen: list[str] = []
    batches = list(clip_batches(training_pass(ctx, DistEnv(), ft, 0, 0), train_keys, labels, 4, seen))
    assert len(batches) == steps_per_epoch(16, FinetuneConfig(batch_size=4, clips_per_sample=1)) == 4
    assert seen == [k for k in first if k in train_keys]  # the pass's order, training videos only
    for i, (x, y) in enumerate(batches):  # a step holds 4 different videos, labels in step
        assert x.shape[0] == 4 and len(set(seen[4 * i: 4 * i + 4])) == 4
        assert y.tolist() == [labels[k] for k in seen[4 * i: 4 * i + 4]]
    ctx.cfg.seed = 1
    assert _pass_keys(ctx, ft, 0, 0)[0] != first  # another seed, another order
