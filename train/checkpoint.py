"""Trainer checkpoints: atomic writes, a retention policy, ``find_latest`` and safe loading.

A checkpoint is ``<run_dir>/checkpoints/step-<9 digits>.pt``. It is written to a temporary name
in the same directory, flushed to disk, then renamed, so a crash mid-write leaves only a
``*.tmp`` file, which is never taken for a checkpoint. Files are read back with
``torch.load(..., weights_only=True)``: checkpoints hold only tensors and plain Python values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from crisscross.shards.atomic import atomic_open

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary files are ignored)."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int | None = 3,
                    keep_every: int | None = None) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step``; then keep only the newest ``keep``
    (plus, if ``keep_every`` is set, every checkpoint whose step is a multiple of it: milestones for
    evaluating the encoders along the run)."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as handle:  # flushed and fsynced before the rename
        torch.save(state, handle)
    _fsync_dir(path.parent)
    if keep is not None and keep > 0:
        for old_step, old in list_checkpoints(run_dir)[:-keep]:
            if not (keep_every and old_step % keep_every == 0):
                old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def _fsync_dir(directory: Path) -> None:
    # make the rename itself durable (POSIX); harmless where directories cannot be opened
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
