"""The CrissCross pretraining loop: one process on one device, or many under ``torchrun``.

Read top to bottom: ``train(config)`` sets up the (optional) process group, model, optimizer and
loader, restores a checkpoint when asked, then runs one plain loop of optimizer steps. Rank 0
alone prints, logs and writes files. Checkpoints hold everything needed to continue exactly
(model, optimizer, scaler, step, each rank's loader position and RNG states, config); SIGTERM or
SIGUSR1 saves one and exits cleanly; a non-finite loss stops the run before anything is saved, so
the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from crisscross.train.checkpoint import (
    CheckpointWriteError,
    checkpoint_path,
    find_latest,
    find_usable,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from crisscross.errors import UserError
from crisscross.train.config import save_config
from crisscross.train.distributed import (
    DistEnv,
    all_ranks_max,
    gather_objects,
    reduce_mean,
    setup_distributed,
    shutdown,
    wrap_ddp,
)
from crisscross.train.export import save_backbones
from crisscross.train.models import CrissCrossModel, ModelConfig
from crisscross.train.objective import CrissCrossObjective, ObjectiveConfig, collapse_std
from crisscross.train.optim import Schedule, build_optimizer, parameter_groups, set_learning_rates
from crisscross.train.prefetch import Prefetcher

CHECKPOINT_FORMAT = 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; nothing was saved after the last good checkpoint."""


# ------------------------------------------------------------------------------------- signals
class StopFlag:
    """Set by SIGTERM/SIGUSR1 (cluster preemption) while training; the loop checks it between steps.

    A context manager: the previous handlers come back afterwards, so a program that calls
    ``train()`` and then does other work (the demo) is terminated by SIGTERM as usual.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum


# -------------------------------------------------------------------------------------- data
def build_loader(config: dict[str, Any], env: DistEnv, batch_per_rank: int):
    run = config["run"]
    kwargs = dict(batch_size=batch_per_rank, rank=env.rank, world_size=env.world_size,
                  device=str(env.device), seed=int(run["seed"]))
    if run["loader"] == "synthetic":
        from crisscross.train.synthetic import build_synthetic_loader
        return build_synthetic_loader(config["synthetic"], **kwargs)
    from crisscross.shards.loader import build_train_loader
    return build_train_loader(config["data"], **kwargs)


# ------------------------------------------------------------------------------------- model
def uses_sync_bn(run_cfg: dict[str, Any], norm: str, *, distributed: bool, cuda: bool) -> bool:
    """BatchNorm becomes SyncBatchNorm only under DDP on GPUs (PyTorch has no CPU SyncBatchNorm)."""
    return distributed and cuda and bool(run_cfg["sync_bn"]) and norm == "batch"


def check_compile(run_cfg: dict[str, Any], norm: str, *, distributed: bool, cuda: bool) -> None:
    """Refuse ``run.compile`` with DDP + SyncBatchNorm: torch.compile fails on that combination
    (pytorch/pytorch#107372, #100239: SyncBatchNorm's collectives inside the compiled graph), and
    it fails only once the job is up on its GPUs. Say so before anything is built."""
    if run_cfg["compile"] and uses_sync_bn(run_cfg, norm, distributed=distributed, cuda=cuda):
        raise ValueError(
            "run.compile=true with DDP + SyncBatchNorm is a known PyTorch failure (pytorch/pytorch#107372); "
            "choose one: run.compile=false (keeps SyncBatchNorm, the paper's setup), or run.sync_bn=false "
            "(per-GPU BatchNorm statistics, then compiling works)")


def build_model(config: dict[str, Any], objective: ObjectiveConfig, env: DistEnv) -> tuple[nn.Module, nn.Module]:
    """(model to call, raw model to save). Unused modalities are frozen so DDP ignores them."""
    model_cfg = ModelConfig.from_dict(config["model"])
    cuda = env.device.type == "cuda"
    check_compile(config["run"], model_cfg.norm, distributed=env.distributed, cuda=cuda)
    torch.manual_seed(int(config["run"]["seed"]))  # identical initial weights on every rank
    raw = CrissCrossModel(model_cfg)
    if config["run"].get("init_from"):  # backbones from an export (docs/weights.md); a resume overrides them
        from crisscross.train.weights_import import init_encoders_from

        init_encoders_from(raw, config["run"]["init_from"])
    for modality in ("video", "audio"):
        if modality not in objective.modalities:
            getattr(raw, modality).requires_grad_(False)
    raw.to(env.device)
    if config["run"]["channels_last"]:
        raw.video.to(memory_format=torch.channels_last_3d)
    if uses_sync_bn(config["run"], model_cfg.norm, distributed=env.distributed, cuda=cuda):
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)  # GPU-only in PyTorch
    model: nn.Module = wrap_ddp(raw, env)
    if config["run"]["compile"]:
        model = torch.compile(model)
    return model, raw


def schedule_for(config: dict[str, Any], steps_per_epoch: int) -> Schedule:
    optim = config["optim"]
    return Schedule(lr=float(optim["lr"]), end_lr=float(optim["end_lr"]), pred_lr=float(optim["pred_lr"]),
                    warmup_steps=round(float(optim["warmup_epochs"]) * steps_per_epoch),
                    total_steps=int(config["run"]["epochs"]) * steps_per_epoch)


# ---------------------------------------------------------------------------------- logging
class RunLogger:
    """Rank 0's outputs: progress bar, TensorBoard scalars, JSONL records, loss-curve PNG."""

    def __init__(self, run_dir: Path, config: dict[str, Any], start: int, total: int, enabled: bool) -> None:
        self.enabled, self.run_dir = enabled, run_dir
        self.bar = self.writer = None
        if not enabled:
            return
        if config["run"]["progress"]:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        if config["run"]["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.jsonl = open(run_dir / "log.jsonl", "a")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss/total']:.4f}", clips_s=f"{metrics['perf/clips_per_s']:.1f}")

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.jsonl.close()


def plot_loss_curve(run_dir: Path) -> Path | None:
    """Loss and sub-losses against step, from log.jsonl (the last record of a step wins)."""
    log = run_dir / "log.jsonl"
    if not log.exists():
        return None
    by_step = {r["step"]: r for r in map(json.loads, log.read_text().splitlines()) if r}
    if not by_step:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = sorted(by_step)
    keys = {k for r in by_step.values() for k in r}
    fig, (ax, ax_collapse) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(k for k in keys if k.startswith("loss/")):
        ax.plot(steps, [by_step[s].get(key, math.nan) for s in steps], label=key[5:],
                linewidth=2.0 if key == "loss/total" else 0.8, linestyle="-" if "/L_" not in key else ":")
    ax.set(xlabel="step", ylabel="loss (-cosine)", title="CrissCross loss and sub-losses")
    ax.legend(fontsize=7)
    for key in sorted(k for k in keys if k.startswith("collapse/")):
        ax_collapse.plot(steps, [by_step[s].get(key, math.nan) for s in steps], label=key[9:])
    ax_collapse.set(xlabel="step", ylabel="std of l2-normalized z", title="collapse monitor (0 = collapsed)")
    ax_collapse.set_ylim(bottom=0)
    ax_collapse.legend(fontsize=7)
    for axis in (ax, ax_collapse):
        axis.grid(alpha=0.3)
    out = run_dir / "loss_curve.png"
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------- checkpoint
def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def write_checkpoint(run_dir: Path, step: int, config: dict[str, Any], raw: nn.Module, optimizer: Any,
                     scaler: torch.amp.GradScaler, loader_state: Any, env: DistEnv) -> Path | None:
    """Collective (every rank calls it): gathers loader/RNG states, rank 0 writes atomically.

    A failed write (full disk, ...) stops every rank with ``CheckpointWriteError``: the ranks
    agree on the outcome instead of waiting at a barrier for a rank 0 that has gone."""
    loader_states = gather_objects(loader_state, env)
    rng_states = gather_objects(rng_state(env.device), env)
    path, error = None, None
    if env.is_main:
        state = {
            "format": CHECKPOINT_FORMAT, "step": step, "config": config, "world_size": env.world_size,
            "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "loader": loader_states, "rng": rng_states,
        }
        try:
            path = save_checkpoint(run_dir, step, state, keep=config["run"]["keep_checkpoints"],
                                   keep_every=config["run"]["keep_every"])
        except CheckpointWriteError as exc:
            error = exc
    if all_ranks_max(error is not None, env):  # also the barrier: no rank runs ahead of the write
        raise error or CheckpointWriteError(checkpoint_path(run_dir, step), RuntimeError(
            "rank 0 could not write it"), None, kept="rank 0's error says why")
    return path


def resume_from(resume: str | None, run_dir: Path) -> Path | None:
    """``auto`` = newest complete checkpoint of the run (or a fresh start); else a path or None."""
    if resume in (None, "", "none"):
        if list_checkpoints(run_dir):
            raise FileExistsError(f"{run_dir} already has checkpoints: pass --resume auto to continue it, "
                                  "or choose another run.dir")
        return None
    if resume == "auto":
        return find_usable(run_dir)  # never a file cut short
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return path


# ------------------------------------------------------------------------------------ training
def train_step(model: nn.Module, objective: CrissCrossObjective, optimizer: Any, scaler: torch.amp.GradScaler,
               autocast: Any, views: dict[str, torch.Tensor]):
    """One optimizer step; returns (loss, sub-losses, outputs) without synchronizing the device."""
    with autocast:
        outputs = model(views)
    loss, sublosses = objective(outputs)  # computed in float32, outside autocast
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # GradScaler unscales first, so LARC sees true gradient norms
    scaler.update()
    return loss, sublosses, outputs


def train(config: dict[str, Any], resume: str | None = None) -> dict[str, Any]:
    """Run (or continue) pretraining as configured; returns a summary dict (rank 0's view)."""
    env = setup_distributed(config["run"]["device"], num_threads=int(config["run"]["num_threads"] or 0))
    try:
        return _train(config, resume, env)
    finally:
        shutdown(env)


@dataclass
class Setup:
    """Everything the loop needs, built identically on every rank."""

    model: nn.Module          # what is called (DDP / compiled wrapper)
    raw: nn.Module            # what is saved (the plain CrissCrossModel)
    objective: CrissCrossObjective
    optimizer: Any            # Adam, or LARC around it
    scaler: torch.amp.GradScaler
    autocast: Any
    loader: Any
    schedule: Schedule
    steps_per_epoch: int
    last_step: int
    global_batch: int


def build_setup(config: dict[str, Any], env: DistEnv) -> Setup:
    run, optim_cfg = config["run"], config["optim"]
    global_batch = int(optim_cfg["batch_size"])
    if global_batch % env.world_size:
        raise ValueError(f"optim.batch_size={global_batch} is not divisible by world size {env.world_size}")
    objective_cfg = ObjectiveConfig.from_dict(config["objective"])
    model, raw = build_model(config, objective_cfg, env)
    optimizer = build_optimizer(parameter_groups(raw), weight_decay=float(optim_cfg["weight_decay"]),
                                betas=tuple(optim_cfg["betas"]), larc=bool(optim_cfg["larc"]),
                                larc_trust=float(optim_cfg["larc_trust"]), larc_clip=bool(optim_cfg["larc_clip"]),
                                fused=env.device.type == "cuda")
    precision = run["precision"]
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    autocast = torch.autocast(env.device.type, dtype=DTYPES[precision]) if precision != "fp32" else nullcontext()
    loader = build_loader(config, env, global_batch // env.world_size)
    if len(loader) < 1:
        raise ValueError(f"the data gives no full batch of {global_batch // env.world_size} per rank")
    steps_per_epoch = int(run["epoch_size"]) // global_batch if run["epoch_size"] else len(loader)
    schedule = schedule_for(config, steps_per_epoch)
    last_step = schedule.total_steps if run["max_steps"] is None else min(int(run["max_steps"]), schedule.total_steps)
    return Setup(model, raw, CrissCrossObjective(objective_cfg), optimizer, scaler, autocast, loader, schedule,
                 steps_per_epoch, last_step, global_batch)


def restore(setup: Setup, checkpoint_file: str, env: DistEnv) -> int:
    """Load a checkpoint into the setup; returns the step to continue from."""
    state = load_checkpoint(checkpoint_file, map_location="cpu")  # RNG states must stay on the CPU
    setup.raw.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scaler.load_state_dict(state["scaler"])
    if state["world_size"] == env.world_size:
        setup.loader.load_state_dict(state["loader"][env.rank])
        restore_rng(state["rng"][env.rank], env.device)
    elif env.is_main:
        print(f"warning: checkpoint was written by {state['world_size']} ranks, now {env.world_size}: "
              "the data order restarts (loader positions are per rank)")
    return int(state["step"])


class IntervalMeter:
    """Sums sub-losses on the device (no per-step sync) and data-wait time between log records."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.data_wait, self.steps, self.sums = time.perf_counter(), 0.0, 0, None

    def add(self, values: torch.Tensor) -> None:
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1

    def metrics(self, names: list[str], global_batch: int, env: DistEnv) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        local = torch.cat([self.sums / self.steps, torch.tensor([self.data_wait / elapsed], device=self.sums.device)])
        means = reduce_mean(local, env).tolist()
        return {**dict(zip(names, means[:-1])), "perf/clips_per_s": self.steps * global_batch / elapsed,
                "perf/data_wait_frac": means[-1]}


def _train(config: dict[str, Any], resume: str | None, env: DistEnv) -> dict[str, Any]:
    run = config["run"]
    run_dir = Path(run["dir"])
    setup = build_setup(config, env)
    checkpoint_file = resume_from(resume, run_dir) if env.is_main else None
    checkpoint_file = gather_objects(str(checkpoint_file) if checkpoint_file else None, env)[0]
    start_step = restore(setup, checkpoint_file, env) if checkpoint_file else 0
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")

    logger = RunLogger(run_dir, config, start_step, setup.last_step, env.is_main)
    if checkpoint_file:
        logger.message(f"resumed from {checkpoint_file} at step {start_step}")
    stream = Prefetcher(setup.loader, depth=int(run["prefetch"]))
    try:
        with StopFlag() as stop:
            status, step, metrics = run_steps(config, setup, env, stream, logger, stop, start_step)
    finally:
        stream.close()
        logger.close()
    return finish(config, setup, env, status, step, metrics)


def run_steps(config: dict[str, Any], setup: Setup, env: DistEnv, stream: Prefetcher, logger: RunLogger,
              stop: StopFlag, start_step: int) -> tuple[str, int, dict[str, float]]:
    """The training loop; returns (status, step reached, last logged metrics)."""
    run, run_dir = config["run"], Path(config["run"]["dir"])
    log_every, ckpt_every = max(int(run["log_every"]), 1), max(int(run["checkpoint_every"]), 1)
    views_needed = setup.objective.cfg.views
    meter = IntervalMeter()
    nonfinite = torch.zeros((), dtype=torch.bool, device=env.device)
    saved_step, metrics = start_step, {}
    save = lambda step: write_checkpoint(run_dir, step, config, setup.raw, setup.optimizer,  # noqa: E731
                                         setup.scaler, stream.state_dict(), env)
    setup.model.train()

    for step in range(start_step, setup.last_step):
        if all_ranks_max(stop.signal is not None, env):
            save(step)
            logger.message(f"stop signal received: saved the checkpoint of step {step} and exiting")
            return "preempted", step, metrics

        waited = time.perf_counter()
        batch = stream.next()
        meter.data_wait += time.perf_counter() - waited
        views = {name: batch[name] for name in views_needed}
        if run["channels_last"]:
            views = {k: v.contiguous(memory_format=torch.channels_last_3d) if k[0] == "v" else v
                     for k, v in views.items()}

        rates = set_learning_rates(setup.optimizer, step, setup.schedule)
        loss, sublosses, outputs = train_step(setup.model, setup.objective, setup.optimizer, setup.scaler,
                                              setup.autocast, views)
        nonfinite |= ~torch.isfinite(loss.detach())
        meter.add(torch.stack([loss.detach(), *sublosses.values()]))
        logger.step()
        done = step + 1

        at_log = done % log_every == 0 or done == setup.last_step
        at_ckpt = done % ckpt_every == 0 or done == setup.last_step
        if (at_log or at_ckpt) and all_ranks_max(bool(nonfinite.item()), env):
            raise NonFiniteLossError(
                f"non-finite loss between steps {done - meter.steps + 1} and {done}; stopping. "
                f"The last good checkpoint is {find_latest(run_dir)} (step {saved_step}); lower the "
                "learning rate, enable optim.larc, or use run.precision=fp32/bf16 before resuming.")
        if at_log:
            metrics = meter.metrics(["loss/total", *sublosses], setup.global_batch, env)
            metrics.update({f"collapse/{m}": collapse_std(outputs[v][0]).item()
                            for m, v in (("video", "v1"), ("audio", "a1")) if v in outputs})
            metrics.update({f"lr/{name}": lr for name, lr in rates.items()})
            metrics["epoch"] = done / setup.steps_per_epoch
            # loader counters (e.g. short-clip fallbacks of the relaxed view sampling), rank 0's view
            metrics.update({f"data/{k}": float(v) for k, v in setup.loader.stats().items()
                            if isinstance(v, (int, float))})
            logger.record(done, metrics)
            meter.reset()
        if at_ckpt:
            save(done)
            saved_step = done
    return "completed", setup.last_step, metrics


def finish(config: dict[str, Any], setup: Setup, env: DistEnv, status: str, step: int,
           metrics: dict[str, float]) -> dict[str, Any]:
    """Rank 0: loss curve, backbone export and summary.json of a completed run; the summary dict."""
    run_dir = Path(config["run"]["dir"])
    summary = {"status": status, "step": step, "run_dir": str(run_dir), "metrics": metrics,
               "checkpoint": str(find_latest(run_dir))}
    if env.is_main and status == "completed":
        summary["loss_curve"] = str(plot_loss_curve(run_dir))
        if config["run"]["export"]:
            summary["export"] = str(export_backbones(run_dir, setup, config))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class ExportWriteError(UserError, OSError):
    """The end-of-run export could not be written; the final checkpoint is intact and a rerun with
    ``--resume auto`` writes the export again (the run is complete, no step is repeated)."""


def export_backbones(run_dir: Path, setup: Setup, config: dict[str, Any]) -> Path:
    """``save_backbones`` with a failed write (full disk, ...) reported as the file and the reason.
    backbones.json is written last, so an export without it is incomplete and never loaded."""
    try:
        return save_backbones(run_dir / "export", setup.raw.video.encoder, setup.raw.audio.encoder,
                              config["model"], train_config=config)
    except OSError as exc:
        raise ExportWriteError(
            f"could not write the export in {run_dir / 'export'}: {exc}; the checkpoint {find_latest(run_dir)} "
            "is intact: free space, then rerun the same command with --resume auto to write the export") from exc
