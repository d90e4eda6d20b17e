"""Trainer checkpoints: atomic writes, a retention policy, ``find_latest`` and safe loading.

A checkpoint is ``<run_dir>/checkpoints/step-<9 digits>.pt``. It is written to a temporary name
in the same directory, flushed to disk, then renamed, so a crash mid-write leaves only a
``*.tmp`` file, which is never taken for a checkpoint. Files are read back with
``torch.load(..., weights_only=True)``: checkpoints hold only tensors and plain Python values.

A write that fails part-way (full disk, quota, a file-size limit, a folder gone read-only) raises
``CheckpointWriteError`` naming the file and the operating system's reason; the temporary file is
removed and the older checkpoints are untouched (retention runs only after a successful write).
``find_usable`` (what ``--resume auto`` takes) skips a newest file that is not a complete
checkpoint archive, e.g. one a file system lost after the rename, and says so.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from crisscross.errors import UserError
from crisscross.shards.atomic import atomic_open

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written; the message names the file, the reason and the newest
    checkpoint that is still intact. A UserError: the command line prints it in one line."""

    def __init__(self, path: Path, exc: BaseException, previous: Path | None, *, kept: str | None = None) -> None:
        reason = _os_reason(exc)
        kept = kept or (f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists")
        super().__init__(f"could not write checkpoint {path}: {reason}; {kept} (free space or fix the folder, "
                         "then rerun with --resume auto)")
        self.path, self.previous = path, previous


def _os_reason(exc: BaseException) -> str:
    """The operating system's error behind ``exc`` (torch.save wraps it in a RuntimeError whose own
    text, 'unexpected pos ...', says nothing), e.g. '[Errno 28] No space left on device'."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return f"[Errno {seen.errno}] {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {exc}"


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


def is_complete(path: Path) -> bool:
    """A checkpoint written to the end: torch.save's zip archive ends with its central directory,
    which a file cut short lacks (checked from the file's tail, without loading it)."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def find_usable(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that is a complete archive; newer damaged ones are reported on stderr
    and left in place (renamed files are never deleted by the reader)."""
    for _step, path in reversed(list_checkpoints(run_dir)):
        if is_complete(path):
            return path
        print(f"warning: checkpoint {path} is incomplete (not a whole archive); skipping it", file=sys.stderr)
    return None


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int | None = 3,
                    keep_every: int | None = None) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step``; then keep only the newest ``keep``
    (plus, if ``keep_every`` is set, every checkpoint whose step is a multiple of it: milestones for
    evaluating the encoders along the run)."""
    path = checkpoint_path(run_dir, step)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:  # flushed and fsynced before the rename
            torch.save(state, handle)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:  # torch.save turns a failed write into a RuntimeError
        raise CheckpointWriteError(path, exc, find_latest(run_dir)) from exc
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
