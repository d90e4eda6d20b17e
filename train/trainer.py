"""The CrissCross pretraining loop: one process on one device, or many under ``torchrun``.

Read top to bottom: ``train(config)`` sets up the (optional) process group, model, optimizer and
loader, restores a checkpoint when asked, then runs one plain loop of optimizer steps. Rank 0
alone prints, logs and writes files. Checkpoints hold everything needed to continue exactly
(model, optimizer, scaler, step, each rank's loader position and RNG states, config); SIGTERM or
SIGUSR1 saves one and exits cleanly; a non-finite loss stops the run before anything is saved, so
the last checkpoint on disk is the last good one.

Around the loop: ``distributed.py`` (process group, DDP, collectives), ``signals.py`` (the stop
flag), ``runlog.py`` (what rank 0 logs and plots), ``resume.py`` (what a checkpoint holds and how a
run continues from it) and ``checkpoint.py`` (the files). ``build_setup`` is public: the benchmarks
(``tools/bench_train.py``) time exactly the model, optimizer and loader that ``train()`` runs.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crisscross.errors import UserError
from crisscross.shards.atomic import atomic_write
from crisscross.train.checkpoint import find_latest
from crisscross.train.config import save_config, train_config
from crisscross.train.distributed import (
    DistEnv,
    all_ranks_max,
    gather_objects,
    setup_distributed,
    shutdown,
    wrap_ddp,
)
from crisscross.train.export import save_backbones
from crisscross.train.methods import init_from_run, model_kwargs, objective_state, projection, step_context
from crisscross.train.models import build_model as build_network
from crisscross.train.models import view_modality
from crisscross.train.objective import CrissCrossObjective, ObjectiveConfig, collapse_std  # noqa: F401 (tests patch it)
from crisscross.train.objectives.base import StepContext
from crisscross.train.objectives.registry import build_objective
from crisscross.train.optim import Schedule, build_optimizer, parameter_groups, set_learning_rates
from crisscross.train.prefetch import Prefetcher
from crisscross.train.resume import restore_checkpoint, resume_from, write_checkpoint
from crisscross.train.runlog import IntervalMeter, RunLogger, plot_loss_curve
from crisscross.train.signals import StopFlag

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; nothing was saved after the last good checkpoint."""


# -------------------------------------------------------------------------------------- data
def build_loader(config: dict[str, Any], env: DistEnv, batch_per_rank: int):
    run = train_config(config).run
    kwargs = dict(batch_size=batch_per_rank, rank=env.rank, world_size=env.world_size,
                  device=str(env.device), seed=run.seed)
    if run.loader == "synthetic":
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
    typed = train_config(config)
    run, model_cfg = typed.run, typed.model
    cuda = env.device.type == "cuda"
    check_compile(config["run"], model_cfg.norm, distributed=env.distributed, cuda=cuda)
    torch.manual_seed(run.seed)  # identical initial weights on every rank
    raw = build_network(model_cfg)  # CrissCross's model, or the other methods' (docs/methods.md)
    if run.init_from and not run.init_objective:
        # backbones from an export (docs/weights.md); a resume overrides them. With
        # run.init_objective the whole model and the objective state come in build_setup
        from crisscross.train.weights_import import init_encoders_from

        init_encoders_from(raw, run.init_from)
    for modality in ("video", "audio"):
        if modality not in objective.modalities:
            getattr(raw, modality).requires_grad_(False)
    raw.to(env.device)
    if run.channels_last:
        raw.video.to(memory_format=torch.channels_last_3d)
    if uses_sync_bn(config["run"], model_cfg.norm, distributed=env.distributed, cuda=cuda):
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)  # GPU-only in PyTorch
    model: nn.Module = wrap_ddp(raw, env)
    if run.compile:
        model = torch.compile(model)
    return model, raw


def schedule_for(config: dict[str, Any], steps_per_epoch: int) -> Schedule:
    typed = train_config(config)
    optim = typed.optim
    return Schedule(lr=optim.lr, end_lr=optim.end_lr, pred_lr=optim.pred_lr,
                    warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
                    total_steps=typed.run.epochs * steps_per_epoch,
                    warmup_start_lr=optim.warmup_start_lr, kind=optim.schedule)


# ------------------------------------------------------------------------------------ training
def train_step(model: nn.Module, objective: Any, optimizer: Any, scaler: torch.amp.GradScaler,
               autocast: Any, views: dict[str, torch.Tensor], batch: dict[str, Any] | None = None,
               ctx: StepContext | None = None, forward_kwargs: dict[str, Any] | None = None):
    """One optimizer step; returns (loss, sub-losses, outputs) without synchronizing the device.

    ``batch`` gives the objective the batch's other fields (AVID's instance keys), ``ctx`` the
    step, epoch and process group, ``forward_kwargs`` the model's extra inputs (STiCA's crop seed)."""
    with autocast:
        outputs = model(views, **(forward_kwargs or {}))
    # computed in float32, outside autocast
    loss, sublosses = objective(outputs, batch if batch is not None else views, ctx or StepContext())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # GradScaler unscales first, so LARC sees true gradient norms
    scaler.update()
    return loss, sublosses, outputs


def model_views(batch: dict[str, Any], names: tuple[str, ...] | list[str], *, channels_last: bool) -> dict[str, Any]:
    """The views the objective uses, video views in channels_last_3d when asked."""
    views = {name: batch[name] for name in names}
    if channels_last:
        views = {k: v.contiguous(memory_format=torch.channels_last_3d) if view_modality(k) == "video" else v
                 for k, v in views.items()}
    return views


def train(config: dict[str, Any], resume: str | None = None) -> dict[str, Any]:
    """Run (or continue) pretraining as configured; returns a summary dict (rank 0's view)."""
    run = train_config(config).run
    env = setup_distributed(run.device, num_threads=run.num_threads or 0)
    try:
        return _train(config, resume, env)
    finally:
        shutdown(env)


@dataclass
class Setup:
    """Everything the loop needs, built identically on every rank."""

    model: nn.Module          # what is called (DDP / compiled wrapper)
    raw: nn.Module            # what is saved (the plain CrissCrossModel or ContrastiveModel)
    objective: Any            # the objective interface (train/objectives/base.py)
    optimizer: Any            # Adam, or LARC around it
    scaler: torch.amp.GradScaler
    autocast: Any
    loader: Any
    schedule: Schedule
    steps_per_epoch: int
    last_step: int
    global_batch: int


def build_setup(config: dict[str, Any], env: DistEnv) -> Setup:
    """Model, optimizer, precision, loader and schedule of a resolved config, on ``env``'s device.

    Public: what ``train()`` trains, for the benchmarks to time (``env`` from
    ``crisscross.train.distributed.setup_distributed``). No checkpoint is read or written."""
    typed = train_config(config)
    run, optim_cfg = typed.run, typed.optim
    global_batch = optim_cfg.batch_size
    if global_batch % env.world_size:
        raise ValueError(f"optim.batch_size={global_batch} is not divisible by world size {env.world_size}")
    model, raw = build_model(config, typed.objective, env)
    optimizer = build_optimizer(parameter_groups(raw), weight_decay=optim_cfg.weight_decay,
                                betas=tuple(optim_cfg.betas), larc=optim_cfg.larc,
                                larc_trust=optim_cfg.larc_trust, larc_clip=optim_cfg.larc_clip,
                                fused=env.device.type == "cuda", name=optim_cfg.name,
                                momentum=optim_cfg.momentum)
    objective = build_objective(config, env.device)
    if run.init_from and run.init_objective:  # e.g. CMA from an AVID run; a resume overrides it
        message = init_from_run(raw, objective, run.init_from)
        if env.is_main:
            print(message)
    precision = run.precision
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    autocast = torch.autocast(env.device.type, dtype=DTYPES[precision]) if precision != "fp32" else nullcontext()
    loader = build_loader(config, env, global_batch // env.world_size)
    if len(loader) < 1:
        raise ValueError(f"the data gives no full batch of {global_batch // env.world_size} per rank")
    steps_per_epoch = run.epoch_size // global_batch if run.epoch_size else len(loader)
    schedule = schedule_for(config, steps_per_epoch)
    last_step = schedule.total_steps if run.max_steps is None else min(run.max_steps, schedule.total_steps)
    return Setup(model, raw, objective, optimizer, scaler, autocast, loader, schedule,
                 steps_per_epoch, last_step, global_batch)


def restore(setup: Setup, checkpoint_file: str, env: DistEnv) -> int:
    """Load a checkpoint into the setup; returns the step to continue from."""
    return restore_checkpoint(checkpoint_file, env, raw=setup.raw, optimizer=setup.optimizer, scaler=setup.scaler,
                              loader=setup.loader, objective=setup.objective)


def _train(config: dict[str, Any], resume: str | None, env: DistEnv) -> dict[str, Any]:
    run = train_config(config).run
    run_dir = Path(run.dir)
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
    if hasattr(setup.loader, "limit_action"):  # past data.max_bad_fraction: a flag, so all ranks stop together
        setup.loader.limit_action = "flag"
    stream = Prefetcher(setup.loader, depth=run.prefetch)
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
    run = train_config(config).run
    run_dir = Path(run.dir)
    log_every, ckpt_every = run.log_every, run.checkpoint_every
    views_needed = setup.objective.views
    meter = IntervalMeter()
    nonfinite = torch.zeros((), dtype=torch.bool, device=env.device)
    saved_step, metrics = start_step, {}
    save = lambda step: write_checkpoint(run_dir, step, config, setup.raw, setup.optimizer,  # noqa: E731
                                         setup.scaler, stream.state_dict(), env,
                                         objective_state=objective_state(setup.objective))
    data_error: str | None = None  # this rank's loader passed data.max_bad_fraction
    setup.model.train()

    for step in range(start_step, setup.last_step):
        if all_ranks_max(stop.signal is not None or data_error is not None, env):
            save(step)
            if all_ranks_max(data_error is not None, env):
                stop_for_bad_samples(run_dir, step, setup, env, data_error)
            logger.message(f"stop signal received: saved the checkpoint of step {step} and exiting")
            return "preempted", step, metrics

        waited = time.perf_counter()
        batch = stream.next()
        meter.data_wait += time.perf_counter() - waited
        data_error = batch.get("data_error") or data_error
        views = model_views(batch, views_needed, channels_last=run.channels_last)

        ctx = step_context(step, setup.steps_per_epoch, env)
        if step % setup.steps_per_epoch == 0:
            setup.objective.on_epoch_start(ctx.epoch, ctx)  # CMA re-mines its positive sets on a schedule
        rates = set_learning_rates(setup.optimizer, step, setup.schedule)
        loss, sublosses, outputs = train_step(setup.model, setup.objective, setup.optimizer, setup.scaler,
                                              setup.autocast, views, batch, ctx,
                                              model_kwargs(setup.raw, run.seed, ctx))
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
            metrics.update({f"collapse/{m}": collapse_std(projection(outputs[v])).item()
                            for m, v in (("video", "v1"), ("audio", "a1")) if v in outputs})
            metrics.update({f"lr/{name}": lr for name, lr in rates.items()})
            metrics["epoch"] = done / setup.steps_per_epoch
            # loader counters (e.g. short-clip fallbacks of the relaxed view sampling), rank 0's view
            metrics.update({f"data/{k}": float(v) for k, v in setup.loader.stats().items()
                            if isinstance(v, (int, float))})
            if hasattr(setup.loader, "bad_samples"):  # every rank's, summed; their keys to bad_samples.jsonl
                metrics["data/bad_samples"] = float(write_bad_samples(run_dir, setup.loader, env))
            logger.record(done, metrics)
            meter.reset()
        if at_ckpt:
            save(done)
            saved_step = done
    if all_ranks_max(data_error is not None, env):  # passed on the last batch: the final checkpoint is saved
        stop_for_bad_samples(run_dir, setup.last_step, setup, env, data_error)
    return "completed", setup.last_step, metrics


def write_bad_samples(run_dir: Path, loader: Any, env: DistEnv) -> int:
    """Collective: every rank's newly found bad samples appended to ``<run.dir>/bad_samples.jsonl``
    by rank 0 (one JSON object per sample, with its rank); returns the count over all ranks."""
    gathered = gather_objects((loader.bad_samples.drain(), loader.stats().get("bad_samples", 0)), env)
    if env.is_main and any(records for records, _ in gathered):
        with open(run_dir / "bad_samples.jsonl", "a", encoding="utf-8") as handle:
            for rank, (records, _) in enumerate(gathered):
                handle.writelines(json.dumps({"rank": rank, **r}) + "\n" for r in records)
    return sum(count for _, count in gathered)


def stop_for_bad_samples(run_dir: Path, step: int, setup: Setup, env: DistEnv, data_error: str | None) -> None:
    """Collective, after the checkpoint of ``step``: write the bad samples' keys, then stop every
    rank with the message of the ranks that passed the bound."""
    from crisscross.shards.loader import BadSampleLimitError

    write_bad_samples(run_dir, setup.loader, env)
    messages = [f"rank {rank}: {m}" if env.distributed else m
                for rank, m in enumerate(gather_objects(data_error, env)) if m]
    raise BadSampleLimitError(f"stopped at step {step} (its checkpoint is saved: {find_latest(run_dir)}): "
                              + " | ".join(messages))


def finish(config: dict[str, Any], setup: Setup, env: DistEnv, status: str, step: int,
           metrics: dict[str, float]) -> dict[str, Any]:
    """Rank 0: loss curve, backbone export and summary.json of a completed run; the summary dict."""
    run = train_config(config).run
    run_dir = Path(run.dir)
    summary = {"status": status, "step": step, "run_dir": str(run_dir), "metrics": metrics,
               "checkpoint": str(find_latest(run_dir))}
    if env.is_main and status == "completed":
        summary["loss_curve"] = str(plot_loss_curve(run_dir))
        if run.export:
            summary["export"] = str(export_backbones(run_dir, setup, config))
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))  # a reader never sees half of it
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
