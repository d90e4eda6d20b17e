"""Crash safety: SIGKILL mid-epoch + --resume auto, SIGTERM saves and exits, NaN keeps the last good
checkpoint. The runs use the debug preset (tiny model, synthetic deterministic data, 4 steps/epoch)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crisscross.train.checkpoint import find_latest, list_checkpoints, load_checkpoint

COMMON = ["run.epochs=6", "run.checkpoint_every=3", "run.keep_checkpoints=2", "run.tensorboard=false"]
CLI = [sys.executable, "-m", "crisscross.tools.cli", "pretrain", "--config", "debug"]
TOTAL_STEPS = 24  # 32 samples / batch 8 = 4 steps per epoch, 6 epochs


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """In-process runs set torch's thread count from run.num_threads; leave other tests unaffected."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _losses(run_dir: Path) -> dict[int, float]:
    """Loss per step from log.jsonl; a step logged twice (before a crash and after resume) keeps the last."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss/total"] for r in records}


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"run ended before the event (rc={process.returncode})")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def _assert_same_run(run_dir: Path, reference: Path, from_step: int) -> None:
    ours, want = load_checkpoint(find_latest(run_dir)), load_checkpoint(find_latest(reference))
    assert ours["step"] == want["step"] == TOTAL_STEPS
    for name, tensor in want["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for key, value in want["optimizer"]["state"].items():
        assert torch.equal(ours["optimizer"]["state"][key]["exp_avg_sq"], value["exp_avg_sq"])
    l_ours, l_want = _losses(run_dir), _losses(reference)
    assert set(range(1, TOTAL_STEPS + 1)) <= set(l_ours)
    for step in range(from_step + 1, TOTAL_STEPS + 1):
        assert l_ours[step] == pytest.approx(l_want[step], abs=1e-7), step
    assert (run_dir / "export" / "backbones.json").exists() and (run_dir / "loss_curve.png").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (in-process, same single thread as the subprocess runs)."""
    from crisscross.train.config import resolve_config
    from crisscross.train.trainer import train

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    assert train(resolve_config("debug", [f"run.dir={run_dir}", *COMMON]))["status"] == "completed"
    return run_dir


def test_sigterm_then_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted(tmp_path, reference):
    run_dir = tmp_path / "interrupted"
    slow = ["synthetic.delay_s=0.1"]  # simulated I/O so that the signals land mid-run

    # 1. preemption: SIGTERM saves the current step and exits cleanly
    process = subprocess.Popen([*CLI, f"run.dir={run_dir}", *COMMON, *slow], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _wait_for(lambda: (run_dir / "checkpoints" / "step-000000003.pt").exists(), process)
    time.sleep(0.15)  # land between checkpoints
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "preempted"
    preempted_at = list_checkpoints(run_dir)[-1][0]
    assert preempted_at == summary["step"] and 3 <= preempted_at < TOTAL_STEPS

    # 2. resume, then a hard crash (SIGKILL: no handler runs) mid-epoch
    process = subprocess.Popen([*CLI, "--resume", "auto", f"run.dir={run_dir}", *COMMON, *slow], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (run_dir / "checkpoints" / "step-000000015.pt").exists(), process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert 15 <= killed_at < TOTAL_STEPS and killed_at % 4 != 0  # mid-epoch (4 steps per epoch)
    assert not (run_dir / "summary.json").exists()

    # 3. resume to the end: same losses after the crash point and bit-identical final weights
    subprocess.run([*CLI, "--resume", "auto", f"run.dir={run_dir}", *COMMON], check=True, env=_env(),
                   timeout=240, stdout=subprocess.DEVNULL)
    _assert_same_run(run_dir, reference, from_step=preempted_at)


def test_fresh_start_into_a_run_with_checkpoints_is_refused(tmp_path):
    from crisscross.train.checkpoint import save_checkpoint
    from crisscross.train.trainer import resume_from

    assert resume_from(None, tmp_path) is None and resume_from("auto", tmp_path) is None
    save_checkpoint(tmp_path, 5, {"step": 5})
    with pytest.raises(FileExistsError, match="--resume auto"):
        resume_from(None, tmp_path)
    assert resume_from("auto", tmp_path).name == "step-000000005.pt"
    with pytest.raises(FileNotFoundError):
        resume_from(str(tmp_path / "nope.pt"), tmp_path)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from crisscross.train import trainer
    from crisscross.train.config import resolve_config

    calls = {"n": 0}
    real_call = trainer.CrissCrossObjective.__call__

    def poisoned(self, outputs):
        calls["n"] += 1
        loss, logs = real_call(self, outputs)
        return (loss * math.nan if calls["n"] == 6 else loss), logs

    monkeypatch.setattr(trainer.CrissCrossObjective, "__call__", poisoned)
    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    config = resolve_config("debug", [f"run.dir={tmp_path}", "run.checkpoint_every=4", "run.log_every=1",
                                      "run.tensorboard=false"])
    with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite loss .*step 4"):
        trainer.train(config)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]  # nothing written after the bad step
    good = load_checkpoint(find_latest(tmp_path))
    assert all(torch.isfinite(t).all() for t in good["model"].values() if t.is_floating_point())
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # the NaN step itself is never logged as a result
    # the preemption handlers are gone again: SIGTERM means "terminate" outside train()
    assert signal.getsignal(signal.SIGTERM) is handlers_before[0]
    assert signal.getsignal(signal.SIGUSR1) is handlers_before[1]
