"""Full finetuning of the pretrained video backbone (supplement E.2, Table S11).

The backbone's last conv block is pooled with adaptive *max* pooling (the paper replaces the
average pool) and feeds a new linear layer (dropout before it). SGD with momentum, a multi-step
schedule, the strong augmentations without blur (the loader's ``linear`` augmentation), and
``clips_per_sample`` random clips per training sample per epoch (Table S11's epoch size over the
number of training videos: UCF101 95K / 9.5K = 10). Test: ``test_pass`` uniformly spaced
un-augmented clips, clip softmaxes averaged per sample. The LAST epoch is reported; with
``eval_every_epoch`` the per-epoch test accuracies are also written, labelled comparison only.

The trainer's machinery: checkpoints after every epoch via ``crisscross.train.checkpoint``
(atomic, newest kept, loaded with weights_only=True), automatic resume from the newest one, and
``torchrun``: under WORLD_SIZE > 1 the model is wrapped in DistributedDataParallel (gloo on CPU)
and each rank trains on its slice of every global batch.
"""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from crisscross.evaluate.config import EvalConfig
from crisscross.evaluate.pipeline import (
    Partition,
    RunContext,
    finish_run,
    label_indices,
    open_run,
)
from crisscross.evaluate.report import COMPARISON_ONLY, ResultRow


@dataclass
class FinetuneConfig:
    """Defaults: Table S11, UCF101 8x224^2."""

    epochs: int = 20
    batch_size: int = 64  # clips per optimizer step, over all ranks
    lr: float = 0.0005
    milestones: list[int] = field(default_factory=lambda: [6, 10, 14])
    gamma: float = 0.3
    weight_decay: float = 0.0
    momentum: float = 0.9
    dropout: float = 0.0
    clips_per_sample: int = 10  # random training clips per sample per epoch
    shuffle_buffer: int = 128  # clips mixed before batching (the loader yields samples in order)
    eval_every_epoch: bool = False  # per-epoch test accuracy, comparison only
    max_epochs_this_run: int | None = None  # stop this invocation early (time-sliced jobs); resume later
    keep_checkpoints: int = 2

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "FinetuneConfig":
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown finetune options: {sorted(unknown)}")
        return cls(**cfg)


class FinetuneModel(nn.Module):
    """Video backbone -> adaptive max pool -> dropout -> new linear layer."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_max_pool3d(self.encoder.forward_features(clips), 1).flatten(1)
        return self.fc(self.dropout(pooled))


# ------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK; a plain ``python`` run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# ------------------------------------------------------------------------------ data
def _loader(ctx: RunContext, clips: int, sampling: str, augment: str, seed: int) -> Iterable[dict[str, Any]]:
    from crisscross.shards.loader import build_eval_loader

    cfg = ctx.cfg
    return build_eval_loader(
        str(ctx.data_dir), clips_per_sample=clips, sampling=sampling, frames=cfg.frames, crop=cfg.crop,
        audio_seconds=cfg.audio_seconds, augment=augment, modalities=("video",), batch_size=cfg.batch_size,
        device=cfg.device, seed=seed, **cfg.loader,
    )


def shuffled_batches(batches: Iterable[dict[str, Any]], keep: set[str], labels: dict[str, int], batch_size: int,
                     buffer_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Clips of the ``keep`` samples, mixed in a buffer, in full batches (the last partial one is dropped)."""
    clips: list[torch.Tensor] = []
    targets: list[int] = []

    def take(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = set(torch.randperm(len(clips), generator=generator)[:n].tolist())
        x = torch.stack([clips[i] for i in sorted(chosen)])
        y = torch.tensor([targets[i] for i in sorted(chosen)])
        clips[:] = [c for i, c in enumerate(clips) if i not in chosen]
        targets[:] = [t for i, t in enumerate(targets) if i not in chosen]
        return x, y

    for batch in batches:
        video = batch["video"]
        for i, key in enumerate(batch["key"]):
            if key in keep:
                clips.extend(video[i].float().unbind(0))
                targets.extend([labels[key]] * video.shape[1])
        while len(clips) >= max(buffer_size, batch_size) + batch_size:
            yield take(batch_size)
    while len(clips) >= batch_size:
        yield take(batch_size)


@torch.no_grad()
def test_accuracy(model: nn.Module, batches: Iterable[dict[str, Any]], keep: set[str], labels: dict[str, int]) -> tuple[float, int]:
    """Sample-level top-1: mean of the clips' softmaxes (no augmentation, uniform clips)."""
    model.eval()
    correct = total = 0
    for batch in batches:
        rows = [i for i, key in enumerate(batch["key"]) if key in keep]
        if not rows:
            continue
        video = batch["video"][rows].float()
        b, k = video.shape[:2]
        probs = model(video.reshape(b * k, *video.shape[2:])).softmax(dim=1).reshape(b, k, -1).mean(dim=1)
        truth = torch.tensor([labels[batch["key"][i]] for i in rows])
        correct += int((probs.argmax(dim=1) == truth).sum())
        total += b
    if total == 0:
        raise ValueError("no test samples reached the evaluation loader")
    return correct / total, total


# ------------------------------------------------------------------------------ training
def _state(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, epoch: int, step: int,
           ft: FinetuneConfig, history: list[float]) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "step": step, "finetune": asdict(ft), "test_history": history}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def finetune_partition(ctx: RunContext, part: Partition, run_dir: Path, ft: FinetuneConfig, world: Dist,
                       labels: dict[str, int], num_classes: int) -> tuple[list[ResultRow], dict[str, float]]:
    from crisscross.train.checkpoint import find_latest, load_checkpoint, save_checkpoint

    cfg = ctx.cfg
    _seed_everything(cfg.seed)
    model = FinetuneModel(copy.deepcopy(ctx.encoders.video), num_classes, ft.dropout).to(cfg.device)
    opt = torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ft.milestones, gamma=ft.gamma)
    start_epoch, step, history = 0, 0, []
    latest = find_latest(run_dir)
    if latest is not None:  # resume: a killed or time-sliced job continues where it stopped
        state = load_checkpoint(latest)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["test_history"])
        if world.main:
            print(f"finetune: resumed {part.name} from {latest} (epoch {start_epoch}, step {step})")
    trained = DDPWrap(model, world)
    train_keys, test_keys = set(part.train_keys), set(part.test_keys)
    timing = {"train": 0.0, "test": 0.0}
    rows: list[ResultRow] = []
    last_epoch = ft.epochs if ft.max_epochs_this_run is None else min(ft.epochs, start_epoch + ft.max_epochs_this_run)
    common = dict(task="finetune", split=part.name, modality="video", input=cfg.input_label("video"), metric="top1")
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = _loader(ctx, ft.clips_per_sample, "random", "linear", seed=cfg.seed * 100003 + epoch)
        for x, y in shuffled_batches(loader, train_keys, labels, ft.batch_size, ft.shuffle_buffer, generator):
            x, y = x[world.rank::world.world].to(cfg.device), y[world.rank::world.world].to(cfg.device)
            loss = F.cross_entropy(trained(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        sched.step()
        timing["train"] += time.perf_counter() - t0
        if ft.eval_every_epoch and world.main:
            t1 = time.perf_counter()
            acc, _ = test_accuracy(model, _test_loader(ctx), test_keys, labels)
            history.append(acc)
            timing["test"] += time.perf_counter() - t1
        if world.main:
            save_checkpoint(run_dir, epoch + 1, _state(model, opt, sched, epoch + 1, step, ft, history),
                            keep=ft.keep_checkpoints)
        world.barrier()
    if last_epoch < ft.epochs:  # stopped early on purpose; the next invocation resumes
        return rows, timing
    if world.main:
        t1 = time.perf_counter()
        acc, n_test = test_accuracy(model, _test_loader(ctx), test_keys, labels)
        timing["test"] += time.perf_counter() - t1
        rows.append(ctx.row(protocol=f"finetune SGD, last epoch ({ft.epochs})", value=acc,
                            extra={"epochs": ft.epochs, "steps": step, "test_samples": n_test,
                                   "finetune": asdict(ft), "world_size": world.world}, **common))
        if history:
            best = int(np.argmax(history))
            rows.append(ctx.row(protocol=f"finetune SGD, best epoch on test {COMPARISON_ONLY}", value=history[best],
                                extra={"epoch": best + 1, "per_epoch": history}, **common))
    return rows, timing


def _test_loader(ctx: RunContext) -> Iterable[dict[str, Any]]:
    tp = ctx.cfg.test_pass
    return _loader(ctx, tp.clips_per_sample, tp.sampling, tp.augment, seed=ctx.cfg.seed)


class DDPWrap(nn.Module):
    """The model itself in a world of one; DistributedDataParallel around it otherwise."""

    def __init__(self, model: nn.Module, world: Dist) -> None:
        super().__init__()
        self.inner = nn.parallel.DistributedDataParallel(model) if world.world > 1 else model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def run_finetune(checkpoint: str, data_dir: Path, cfg: EvalConfig, out_dir: Path) -> Path:
    """Finetune on every partition (normally one: the split's train/test) and write the results.

    Resumes automatically from ``out_dir/<partition>/checkpoints``. Returns results.json's path;
    when ``max_epochs_this_run`` stopped the job early, results.json holds no rows yet.
    """
    world = init_distributed()
    ft = FinetuneConfig.from_dict(cfg.finetune)
    if ft.batch_size % world.world:
        raise ValueError(f"finetune.batch_size {ft.batch_size} is not divisible by the world size {world.world}")
    started = time.perf_counter()
    ctx = open_run(checkpoint, data_dir, cfg)
    labels, classes = label_indices(ctx.manifest)
    rows: list[ResultRow] = []
    timing: dict[str, float] = {"train": 0.0, "test": 0.0}
    for part in ctx.partitions(("video",)):
        part_rows, part_timing = finetune_partition(ctx, part, Path(out_dir) / part.name, ft, world, labels, len(classes))
        rows += part_rows
        for k, v in part_timing.items():
            timing[k] += v
    path = Path(out_dir) / "results.json"
    timing["total"] = time.perf_counter() - started
    if world.main:
        path = finish_run(ctx, out_dir, "finetune", rows, timing)
    world.barrier()
    if world.world > 1:
        dist.destroy_process_group()
    return path
