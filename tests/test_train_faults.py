"""Faults a week-long run must survive (issue 13): a lost rank under torchrun's restarts, and a
checkpoint or export write that fails part-way (full disk, quota, read-only folder).

The runs use the debug preset (tiny model, synthetic deterministic data, 4 steps per epoch at
global batch 8), gloo on the CPU with one thread per process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crisscross.train.checkpoint import find_latest, list_checkpoints, load_checkpoint

CLI = ["-m", "crisscross.tools.cli", "pretrain", "--config", "debug"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
COMMON = ["model.norm=group", "run.epochs=6", "run.checkpoint_every=3", "run.keep_checkpoints=2",
          "run.tensorboard=false", "run.export=false"]
TOTAL_STEPS = 24  # 32 samples / global batch 8 = 4 steps per epoch, 6 epochs


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


# ------------------------------------------------------------------------------- lost rank
def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _worker_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (read from its environment)."""
    for pid in _descendants(torchrun_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and any(e.startswith(b"TORCHELASTIC_RESTART_COUNT=")
                                                       for e in environ):
            return pid
    return None


def _torchrun(run_dir: Path, *extra: str, restarts: int = 0) -> list[str]:
    return [*TORCHRUN, f"--max-restarts={restarts}",
            *CLI, "--resume", "auto", f"run.dir={run_dir}", *COMMON, *extra]


def test_rank_killed_by_sigkill_restarts_the_group_from_the_newest_checkpoint(tmp_path):
    """SIGKILL to rank 1 mid-epoch: torchrun (--max-restarts 1) stops the survivor, starts both
    ranks again, ``--resume auto`` continues from the newest checkpoint, and the final weights and
    Adam state equal an uninterrupted 2-rank run's bit for bit."""
    reference, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    done = subprocess.run(_torchrun(reference), env=_env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    process = subprocess.Popen(_torchrun(run_dir, "synthetic.delay_s=0.1", restarts=1), env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = run_dir / "checkpoints" / "step-000000009.pt"
    deadline = time.monotonic() + 240
    while not target.exists():
        assert process.poll() is None, "run ended before step 9"
        assert time.monotonic() < deadline, "timed out waiting for step 9"
        time.sleep(0.02)
    victim = _worker_pid(process.pid, rank=1)
    assert victim is not None, "rank 1 not found among torchrun's workers"
    os.kill(victim, signal.SIGKILL)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-4000:]
    assert not Path(f"/proc/{victim}").exists()

    # the group restarted once and the new ranks resumed from a checkpoint written before the kill
    resumed = [line for line in out.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, out[-4000:]
    resumed_step = int(resumed[0].rsplit("step", 1)[1])
    assert 9 <= resumed_step < TOTAL_STEPS
    summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert summary["status"] == "completed" and summary["step"] == TOTAL_STEPS

    ours, want = load_checkpoint(find_latest(run_dir)), load_checkpoint(find_latest(reference))
    assert ours["step"] == want["step"] == TOTAL_STEPS and ours["world_size"] == 2
    for name, tensor in want["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for key, value in want["optimizer"]["state"].items():
        assert torch.equal(ours["optimizer"]["state"][key]["exp_avg_sq"], value["exp_avg_sq"]), key
