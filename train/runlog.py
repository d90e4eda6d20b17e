"""What rank 0 writes while training: progress bar, TensorBoard scalars, ``log.jsonl`` records and
the loss-curve PNG, plus the meter that averages the losses between two records.

Kept apart from the loop (``trainer.py``) so the loop reads as steps and decisions; nothing here
decides anything about training.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from crisscross.train.distributed import DistEnv, reduce_mean


class RunLogger:
    """Rank 0's outputs: progress bar, TensorBoard scalars, JSONL records (other ranks: no-ops)."""

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
        self.jsonl = open(run_dir / "log.jsonl", "a")  # open for the whole run; close() closes it

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
        """Means over the interval and the ranks (a collective: every rank calls it)."""
        elapsed = time.perf_counter() - self.start
        local = torch.cat([self.sums / self.steps, torch.tensor([self.data_wait / elapsed], device=self.sums.device)])
        means = reduce_mean(local, env).tolist()
        return {**dict(zip(names, means[:-1])), "perf/clips_per_s": self.steps * global_batch / elapsed,
                "perf/data_wait_frac": means[-1]}


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
