"""Full finetuning of the pretrained video backbone (supplement E.2, Table S11).

The backbone's last conv block is pooled with adaptive *max* pooling (the paper replaces the
average pool) and feeds a new linear layer (dropout before it). SGD with momentum, a multi-step
schedule, the strong augmentations without blur (the loader's ``linear`` augmentation). An epoch
is ``clips_per_sample`` passes over the training videos (Table S11's epoch size over the number of
training videos: UCF101 95K / 9.5K = 10); each pass reads every video once in a freshly shuffled
order with ONE random clip of it, so a step never holds two clips of the same video (as the
paper's training does). The order is a function of (seed, epoch, pass, rank): a resumed run
sees the same batches as an uninterrupted one. Test: ``test_pass`` uniformly spaced
un-augmented clips, clip softmaxes averaged per sample. The LAST epoch is reported; with
``eval_every_epoch`` the per-epoch test accuracies are also written, labelled comparison only.

Processes: one, or many under ``torchrun`` through the trainer's runtime
(``crisscross.train.distributed``: NCCL and ``cuda:LOCAL_RANK`` on GPUs, gloo on the CPU, DDP with
``device_ids``, SyncBatchNorm on GPUs). Every rank reads its own 1/W of the shards (the training
loader's split) for training and for the test pass; test results are gathered to rank 0, which
checks that every test sample was counted exactly once and writes the results. Checkpoints after
every epoch via ``crisscross.train.checkpoint`` (atomic, newest kept, loaded with
weights_only=True), automatic resume from the newest one.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crisscross.evaluate.config import EvalConfig, FinetuneConfig  # noqa: F401 (re-exported)
from crisscross.evaluate.features import learned_pooling
from crisscross.evaluate.pipeline import (
    Partition,
    RunContext,
    finish_run,
    label_indices,
    open_run,
)
from crisscross.evaluate.report import COMPARISON_ONLY, ResultRow
from crisscross.train.distributed import DistEnv, all_ranks_all, gather_objects, setup_distributed, shutdown, wrap_ddp


class FinetuneModel(nn.Module):
    """Video backbone -> adaptive max pool -> dropout -> new linear layer.

    An encoder with a learned pooling (STiCA's transformer) keeps it in place of the max pool and
    finetunes it with the backbone, as GDT/STiCA ``eval_video.py`` does."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.own_pool = learned_pooling(encoder) is not None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        fmap = self.encoder.forward_features(clips)
        if self.own_pool:
            pooled = self.encoder.pool(fmap).flatten(1)
        else:
            pooled = F.adaptive_max_pool3d(fmap, 1).flatten(1)
        return self.fc(self.dropout(pooled))


# ------------------------------------------------------------------------------ data
def derived_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from (seed, epoch, pass, rank, ...): neighbouring tuples give
    unrelated streams, and the same tuple always the same one."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]) % (2**31 - 1)


def _loader(ctx: RunContext, env: DistEnv, clips: int, sampling: str, augment: str, seed: int,
            shuffle: bool = False, shuffle_buffer: int = 256) -> Iterable[dict[str, Any]]:
    """This rank's part of the shards (1/W of the samples) through the DALI evaluation graph."""
    from crisscross.shards.loader import build_eval_loader

    cfg = ctx.cfg
    loader = build_eval_loader(
        str(ctx.data_dir), **cfg.loader_args(), clips_per_sample=clips, sampling=sampling, augment=augment,
        modalities=("video",), batch_size=cfg.batch_size, device=str(env.device), seed=seed, rank=env.rank,
        world_size=env.world_size, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
    )
    ctx.note_skipped(loader.skipped)  # screened out (shards/screen.py): listed in results.json
    return loader


def steps_per_epoch(train_samples: int, ft: FinetuneConfig) -> int:
    """Optimizer steps of one epoch in a world of one: full batches per pass, ``clips_per_sample``
    passes (under torchrun at most this: a pass ends when any rank's part runs out)."""
    return ft.clips_per_sample * (train_samples // ft.batch_size)


def training_pass(ctx: RunContext, env: DistEnv, ft: FinetuneConfig, epoch: int, pass_index: int
                  ) -> Iterable[dict[str, Any]]:
    """One pass over this rank's videos: shuffled, one random augmented clip per video."""
    seed = derived_seed(ctx.cfg.seed, epoch, pass_index, env.rank)
    return _loader(ctx, env, 1, "random", "linear", seed=seed, shuffle=True, shuffle_buffer=ft.shuffle_buffer)


def clip_batches(batches: Iterable[dict[str, Any]], keep: set[str], labels: dict[str, int], batch_size: int,
                 seen: list[str] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first clip of each ``keep`` sample, in reading order, in full batches of ``batch_size``
    (the last partial batch is dropped). ``seen`` collects the keys read, in order."""
    clips: list[torch.Tensor] = []
    targets: list[int] = []
    for batch in batches:
        video = batch["video"]
        for i, key in enumerate(batch["key"]):
            if key not in keep:
                continue
            if seen is not None:
                seen.append(key)
            clips.append(video[i, 0])
            targets.append(labels[key])
            if len(clips) == batch_size:
                yield torch.stack(clips).float(), torch.tensor(targets)
                clips, targets = [], []


# ------------------------------------------------------------------------------ testing
def correct_predictions(scores: torch.Tensor, truth: Sequence[int]) -> torch.Tensor:
    """Per sample: is the top-scoring class the true one? Computed on the scores' device (the
    truth moves to them; torch refuses a comparison across devices, e.g. cuda vs cpu)."""
    return scores.argmax(dim=1) == torch.as_tensor(truth, dtype=torch.long, device=scores.device)


@torch.no_grad()
def sample_results(model: nn.Module, batches: Iterable[dict[str, Any]], keep: set[str],
                   labels: dict[str, int]) -> dict[str, bool]:
    """Per ``keep`` sample read: correct or not, from the mean of its clips' softmaxes."""
    model.eval()
    device = next(model.parameters()).device
    results: dict[str, bool] = {}
    for batch in batches:
        rows = [i for i, key in enumerate(batch["key"]) if key in keep]
        if not rows:
            continue
        video = batch["video"][rows].to(device).float()
        b, k = video.shape[:2]
        probs = model(video.reshape(b * k, *video.shape[2:])).softmax(dim=1).reshape(b, k, -1).mean(dim=1)
        hits = correct_predictions(probs, [labels[batch["key"][i]] for i in rows]).cpu().tolist()
        for i, hit in zip(rows, hits):
            key = batch["key"][i]
            if key in results:
                raise RuntimeError(f"test sample {key} was read twice by one evaluation pass")
            results[key] = bool(hit)
    return results


def merge_rank_results(parts: Sequence[dict[str, bool]], expected: set[str]) -> tuple[float, int]:
    """Rank 0's sample-level top-1 over the ranks' results: each expected sample exactly once."""
    merged: dict[str, bool] = {}
    for rank, part in enumerate(parts):
        twice = merged.keys() & part.keys()
        if twice:
            raise RuntimeError(f"test samples {sorted(twice)[:5]} were evaluated by rank {rank} and an earlier rank")
        merged.update(part)
    missing = expected - merged.keys()
    if not merged or missing:
        raise ValueError(f"{len(missing)} of {len(expected)} test samples never reached the evaluation loader "
                         f"(e.g. {sorted(missing)[:5]})")
    extra = merged.keys() - expected
    if extra:
        raise RuntimeError(f"samples {sorted(extra)[:5]} are not test samples")
    return sum(merged.values()) / len(merged), len(merged)


def sample_accuracy(model: nn.Module, batches: Iterable[dict[str, Any]], keep: set[str],
                  labels: dict[str, int]) -> tuple[float, int]:
    """Sample-level top-1 over the ``keep`` samples of one loader (a world of one)."""
    results = sample_results(model, batches, keep, labels)
    if not results:
        raise ValueError("no test samples reached the evaluation loader")
    return sum(results.values()) / len(results), len(results)


def ranked_test_accuracy(model: nn.Module, ctx: RunContext, env: DistEnv, keep: set[str],
                         labels: dict[str, int]) -> tuple[float, int, list[int]]:
    """Collective: each rank tests its part of the shards; (top-1, samples, samples per rank) on every rank."""
    tp = ctx.cfg.test_pass
    loader = _loader(ctx, env, tp.clips_per_sample, tp.sampling, tp.augment, seed=derived_seed(ctx.cfg.seed, env.rank))
    parts = gather_objects(sample_results(model, loader, keep, labels), env)
    accuracy, total = merge_rank_results(parts, keep)
    return accuracy, total, [len(p) for p in parts]


# ------------------------------------------------------------------------------ training
def _state(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, epoch: int, step: int,
           ft: FinetuneConfig, history: list[float], env: DistEnv) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch, "step": step, "finetune": asdict(ft), "test_history": history,
            "world_size": env.world_size}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(ctx: RunContext, ft: FinetuneConfig, env: DistEnv, num_classes: int) -> nn.Module:
    """The same initial weights on every rank (seeded); SyncBatchNorm across several GPUs."""
    _seed_everything(ctx.cfg.seed)
    model = FinetuneModel(copy.deepcopy(ctx.encoders.video), num_classes, ft.dropout).to(env.device)
    if ft.sync_bn and env.distributed and env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # GPU-only in PyTorch
    return model


def train_epoch(ctx: RunContext, env: DistEnv, ft: FinetuneConfig, trained: nn.Module, opt: torch.optim.Optimizer,
                keep: set[str], labels: dict[str, int], epoch: int) -> tuple[int, list[str]]:
    """``clips_per_sample`` shuffled passes; returns (optimizer steps, training keys this rank read).

    Ranks step together: a pass ends for all when any rank's part has no full batch left (the
    parts differ by the test samples they hold), so DDP's collectives always match."""
    torch.manual_seed(derived_seed(ctx.cfg.seed, epoch, env.rank))  # dropout masks: resumable, per rank
    trained.train()
    steps, seen = 0, []
    for pass_index in range(ft.clips_per_sample):
        stream = clip_batches(training_pass(ctx, env, ft, epoch, pass_index), keep, labels,
                              ft.batch_size // env.world_size, seen)
        while True:
            item = next(stream, None)
            if not all_ranks_all(item is not None, env):
                break
            x, y = item
            loss = F.cross_entropy(trained(x.to(env.device)), y.to(env.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return steps, seen


def _resume(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, env: DistEnv,
            part: Partition) -> tuple[int, int, list[float]]:
    """(start epoch, step, test history) from the newest checkpoint rank 0 finds, on every rank."""
    from crisscross.train.checkpoint import find_latest, load_checkpoint

    latest = find_latest(run_dir) if env.is_main else None
    latest = gather_objects(str(latest) if latest else None, env)[0]
    if latest is None:
        return 0, 0, []
    state = load_checkpoint(latest)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if env.is_main:
        print(f"finetune: resumed {part.name} from {latest} (epoch {state['epoch']}, step {state['step']})")
        if int(state.get("world_size", env.world_size)) != env.world_size:
            print(f"warning: the checkpoint was written by {state['world_size']} ranks, now {env.world_size}: "
                  "the data order differs from an uninterrupted run")
    return int(state["epoch"]), int(state["step"]), list(state["test_history"])


def finetune_partition(ctx: RunContext, part: Partition, run_dir: Path, ft: FinetuneConfig, env: DistEnv,
                       labels: dict[str, int], num_classes: int) -> tuple[list[ResultRow], dict[str, float]]:
    from crisscross.train.checkpoint import save_checkpoint

    model = build_model(ctx, ft, env, num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ft.milestones, gamma=ft.gamma)
    start_epoch, step, history = _resume(run_dir, model, opt, sched, env, part)
    trained = wrap_ddp(model, env)
    train_keys, test_keys = set(part.train_keys), set(part.test_keys)
    timing = {"train": 0.0, "test": 0.0}
    read_per_rank: list[int] = []
    last_epoch = ft.epochs if ft.max_epochs_this_run is None else min(ft.epochs, start_epoch + ft.max_epochs_this_run)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        epoch_steps, seen = train_epoch(ctx, env, ft, trained, opt, train_keys, labels, epoch)
        if epoch_steps == 0:  # never report an untrained head as a finetuning result
            raise ValueError(f"finetune: no rank had a full batch of {ft.batch_size // env.world_size} training "
                             f"clips ({len(train_keys)} training samples over {env.world_size} rank(s)); lower "
                             "finetune.batch_size or use more data")
        step += epoch_steps
        sched.step()
        read_per_rank = _check_disjoint(gather_objects(sorted(set(seen)), env))
        timing["train"] += time.perf_counter() - t0
        if ft.eval_every_epoch:
            t1 = time.perf_counter()
            history.append(ranked_test_accuracy(model, ctx, env, test_keys, labels)[0])
            timing["test"] += time.perf_counter() - t1
        if env.is_main:
            save_checkpoint(run_dir, epoch + 1, _state(model, opt, sched, epoch + 1, step, ft, history, env),
                            keep=ft.keep_checkpoints)
        env.barrier()
    if last_epoch < ft.epochs:  # stopped early on purpose; the next invocation resumes
        return [], timing
    t1 = time.perf_counter()
    acc, n_test, test_per_rank = ranked_test_accuracy(model, ctx, env, test_keys, labels)
    timing["test"] += time.perf_counter() - t1
    return _rows(ctx, part, ft, env, acc, step, n_test, test_per_rank, read_per_rank, history), timing


def _check_disjoint(keys_per_rank: list[list[str]]) -> list[int]:
    """The training samples each rank read must not overlap (each reads its own 1/W of the shards)."""
    union = set().union(*map(set, keys_per_rank))
    if len(union) != sum(map(len, keys_per_rank)):
        raise RuntimeError("ranks read overlapping training samples: the shards were not split by rank")
    return [len(k) for k in keys_per_rank]


def _rows(ctx: RunContext, part: Partition, ft: FinetuneConfig, env: DistEnv, acc: float, step: int, n_test: int,
          test_per_rank: list[int], train_per_rank: list[int], history: list[float]) -> list[ResultRow]:
    cfg = ctx.cfg
    common = dict(task="finetune", split=part.name, modality="video", input=cfg.input_label("video"), metric="top1")
    extra = {"epochs": ft.epochs, "steps": step, "test_samples": n_test, "finetune": asdict(ft),
             "world_size": env.world_size, "test_samples_per_rank": test_per_rank}
    if train_per_rank:  # empty when this invocation only tested (every epoch was already done)
        extra["train_samples_per_rank"] = train_per_rank
    rows = [ctx.row(protocol=f"finetune SGD, last epoch ({ft.epochs})", value=acc, extra=extra, **common)]
    if history:
        best = int(np.argmax(history))
        rows.append(ctx.row(protocol=f"finetune SGD, best epoch on test {COMPARISON_ONLY}", value=history[best],
                            extra={"epoch": best + 1, "per_epoch": history}, **common))
    return rows


def run_finetune(checkpoint: str, data_dir: Path, cfg: EvalConfig, out_dir: Path) -> Path:
    """Finetune on every partition (normally one: the split's train/test) and write the results.

    Under torchrun every rank calls this; rank 0 writes. Resumes automatically from
    ``out_dir/<partition>/checkpoints``. Returns results.json's path; when
    ``max_epochs_this_run`` stopped the job early, results.json holds no rows yet.
    """
    env = setup_distributed(cfg.device)
    try:
        return _run(checkpoint, data_dir, replace(cfg, device=str(env.device)), out_dir, env)
    finally:
        shutdown(env)


def _run(checkpoint: str, data_dir: Path, cfg: EvalConfig, out_dir: Path, env: DistEnv) -> Path:
    ft = cfg.finetune
    if ft.batch_size % env.world_size:
        raise ValueError(f"finetune.batch_size {ft.batch_size} is not divisible by the world size {env.world_size}")
    started = time.perf_counter()
    ctx = open_run(checkpoint, data_dir, cfg)
    labels, classes = label_indices(ctx.manifest)
    rows: list[ResultRow] = []
    timing: dict[str, float] = {"train": 0.0, "test": 0.0}
    for part in ctx.partitions(("video",)):
        part_rows, part_timing = finetune_partition(ctx, part, Path(out_dir) / part.name, ft, env, labels, len(classes))
        rows += part_rows
        for k, v in part_timing.items():
            timing[k] += v
    path = Path(out_dir) / "results.json"
    timing["total"] = time.perf_counter() - started
    if env.is_main:
        path = finish_run(ctx, out_dir, "finetune", rows, timing)
    env.barrier()
    return path
