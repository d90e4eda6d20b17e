"""Soak: the training loader (and a tiny training loop) for N batches; RSS and open files over time.

A week-long run must not leak: memory (RSS) and open file descriptors should stay flat once the
pipelines, the prefetch queue and the allocator have warmed up. The benchmark reads shards through
``crisscross.shards.loader.build_train_loader`` with the trainer's ``Prefetcher`` (as in
pretraining), runs the trainer's ``train_step`` on each batch (the ``demo`` preset's tiny model on
the CPU; ``--no-train`` reads only), and samples ``/proc/self`` every ``--every`` batches.

Reported (one JSON line): ``ours`` = RSS at the last batch, ``baseline`` = RSS at batch
``--from`` (default 100), both MiB, ``ratio`` = ours / baseline (1.0 = flat), the same for open
file descriptors and threads, and the whole series.

    crisscross bench soak                         # demo shards built in a temp dir, 1000 batches
    crisscross bench soak --batches 5000 --shards DIR --preset kinetics_sound --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, default=1000, help="batches to run (default 1000)")
    parser.add_argument("--from", dest="start", type=int, default=100,
                        help="the batch whose RSS/open files are the baseline: after warm-up (default 100)")
    parser.add_argument("--every", type=int, default=50, help="sample RSS and open files every this many batches")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (cpu)")
    parser.add_argument("--preset", default="demo", help="training preset (default demo: tiny model)")
    parser.add_argument("--shards", type=Path, default=None,
                        help="dataset directory (default: generated demo clips built into a temp dir)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's, at most 8)")
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="read batches only (no training step)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="extra config overrides")


def process_figures() -> dict[str, float]:
    """This process's resident memory (MiB), open file descriptors and threads, from /proc."""
    status = Path("/proc/self/status").read_text().splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in status if ":" in line}
    return {"rss_mib": int(fields["VmRSS"][0]) / 1024.0, "fds": float(len(os.listdir("/proc/self/fd"))),
            "threads": float(fields["Threads"][0])}


def growth(series: list[dict[str, float]], start: int) -> dict[str, Any]:
    """Figures at batch ``start`` (the first sample at or after it) and at the last sample."""
    first = next((s for s in series if s["batch"] >= start), series[-1])
    last = series[-1]
    out: dict[str, Any] = {"from_batch": first["batch"], "to_batch": last["batch"]}
    for key in ("rss_mib", "fds", "threads"):
        out[f"{key}_from"], out[f"{key}_to"] = round(first[key], 2), round(last[key], 2)
        out[f"{key}_growth_pct"] = round(100.0 * (last[key] - first[key]) / first[key], 2) if first[key] else 0.0
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crisscross.train.config import resolve_config

    if args.batches <= args.start:
        raise ValueError(f"--batches ({args.batches}) must exceed --from ({args.start})")
    if args.every < 1:
        raise ValueError("--every must be at least 1")
    overrides = [f"run.device={args.device}", "run.loader=dali", *args.overrides]
    config = resolve_config(args.preset, overrides)
    batch = args.batch or min(8, int(config["optim"]["batch_size"]))
    config["optim"]["batch_size"] = batch
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        if args.shards is None:
            from crisscross.tools.bench_train import _demo_shards
            shards = _demo_shards(Path(tmp), 32)
        else:
            shards = args.shards
        config["data"]["shards"] = str(shards)
        series, seconds = soak(config, args.batches, args.every, train=args.train)
    figures = growth(series, args.start)
    return {
        "ours": figures["rss_mib_to"], "baseline": figures["rss_mib_from"],
        "ratio": round(figures["rss_mib_to"] / figures["rss_mib_from"], 4), "unit": "MiB RSS",
        "device": args.device, **figures, "batches": args.batches, "batch": batch, "train": args.train,
        "preset": args.preset, "seconds": round(seconds, 1), "series": series,
    }


def soak(config: dict[str, Any], batches: int, every: int, *, train: bool) -> tuple[list[dict[str, float]], float]:
    """Run ``batches`` batches (with a training step each when ``train``); the sampled series."""
    from crisscross.train.distributed import setup_distributed
    from crisscross.train.methods import model_kwargs
    from crisscross.train.objectives.base import StepContext
    from crisscross.train.optim import Schedule, set_learning_rates
    from crisscross.train.prefetch import Prefetcher
    from crisscross.train.trainer import build_setup, model_views, train_step

    env = setup_distributed(config["run"])
    setup = build_setup(config, env)  # the trainer's own model, objective, optimizer, precision and loader
    o = config["optim"]
    set_learning_rates(setup.optimizer, 10, Schedule(o["lr"], o["end_lr"], o["pred_lr"], 0, 100))
    stream = Prefetcher(setup.loader, depth=int(config["run"]["prefetch"]))  # as the trainer reads it
    ctx = StepContext(env=env)
    series: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        for index in range(1, batches + 1):
            batch = stream.next()
            if train:
                views = model_views(batch, setup.objective.views, channels_last=bool(config["run"]["channels_last"]))
                train_step(setup.model, setup.objective, setup.optimizer, setup.scaler, setup.autocast, views,
                           batch, ctx, model_kwargs(setup.raw, int(config["run"]["seed"]), ctx))
            del batch
            if index % every == 0 or index == batches:
                series.append({"batch": index, "seconds": round(time.perf_counter() - start, 1),
                               **process_figures()})
    finally:
        stream.close()
    return series, time.perf_counter() - start
