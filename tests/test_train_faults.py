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

import torch

from crisscross.train.checkpoint import find_latest, load_checkpoint

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
def _worker_pid(torchrun_pid: int, rank: int, descendants) -> int | None:
    """The pid of the torchrun worker with RANK=rank (read from its environment)."""
    for pid in descendants(torchrun_pid):
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


def test_rank_killed_by_sigkill_restarts_the_group_from_the_newest_checkpoint(tmp_path, descendants):
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
    victim = _worker_pid(process.pid, 1, descendants)
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


# ------------------------------------------------------------------ failed checkpoint/export write
# The CLI run under a file-size limit (RLIMIT_FSIZE) armed just before one write: the kernel then
# fails write() part-way with EFBIG, as a full disk fails it with ENOSPC. SIGXFSZ is ignored so
# the process sees the error instead of being killed by the signal.
WRAPPER = '''
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from crisscross.train import resume, trainer
from crisscross.train.checkpoint import find_latest
what, arm_step = sys.argv[1], int(sys.argv[2])
run_dir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("run.dir="))

def arm(limit=None):  # default: half the checkpoint already on disk, so the next one fails part-way
    limit = limit or os.path.getsize(find_latest(run_dir)) // 2
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

real_save, real_export = resume.save_checkpoint, trainer.save_backbones
def save(run_dir_, step, state, **kw):
    if what == "checkpoint" and step >= arm_step:
        arm()
    return real_save(run_dir_, step, state, **kw)
def export(*args, **kw):
    if what == "export":
        arm(100_000)  # part-way through video.safetensors (about 470 kB for the debug model)
    return real_export(*args, **kw)
resume.save_checkpoint, trainer.save_backbones = save, export
from crisscross.tools.cli import main
sys.exit(main(sys.argv[3:]))
'''
SHORT = ["run.epochs=2", "run.checkpoint_every=4", "run.tensorboard=false"]  # checkpoints at steps 4 and 8


def _wrapper(tmp_path: Path) -> Path:
    path = tmp_path / "limited_write.py"
    path.write_text(WRAPPER)
    return path


def _files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path):
    run_dir = tmp_path / "run"
    args = [*CLI[2:], f"run.dir={run_dir}", *SHORT]
    done = subprocess.run([sys.executable, str(_wrapper(tmp_path)), "checkpoint", "8", *args], env=_env(),
                          timeout=240, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("crisscross pretrain: error: could not write checkpoint "), error
    assert str(run_dir / "checkpoints" / "step-000000008.pt") in error and "File too large" in error
    assert f"previous checkpoint {run_dir / 'checkpoints' / 'step-000000004.pt'} is intact" in error
    # no temporary or partial file is left; the previous checkpoint loads and --resume auto takes it
    assert _files(run_dir) == ["step-000000004.pt"]
    assert load_checkpoint(find_latest(run_dir))["step"] == 4
    resumed = subprocess.run([sys.executable, *CLI, "--resume", "auto", *args[3:]], env=_env(), timeout=240,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "at step 4" in resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["step"] == 8


def test_failed_export_write_names_the_file_and_resume_auto_writes_it(tmp_path):
    run_dir = tmp_path / "run"
    args = [*CLI[2:], f"run.dir={run_dir}", *SHORT]
    done = subprocess.run([sys.executable, str(_wrapper(tmp_path)), "export", "0", *args], env=_env(),
                          timeout=240, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert f"could not write the export in {run_dir / 'export'}" in error and "File too large" in error, error
    assert str(run_dir / "export" / "video.safetensors") in error  # which file, not only the folder
    assert not (run_dir / "export" / "backbones.json").exists()  # an incomplete export is never loadable
    assert [p.name for p in (run_dir / "export").iterdir() if p.name.startswith(".")] == []  # no temp files
    assert load_checkpoint(find_latest(run_dir))["step"] == 8
    again = subprocess.run([sys.executable, *CLI, "--resume", "auto", *args[3:]], env=_env(), timeout=240,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "export" / "backbones.json").exists()
    from crisscross.train.export import load_backbones
    load_backbones(run_dir / "export")


def test_resume_auto_skips_a_checkpoint_cut_short(tmp_path, capsys):
    """A file under a checkpoint name that is not a whole archive (a file system that lost the data
    after the rename) is never taken by --resume auto; the one before it is, with a warning."""
    from crisscross.train.checkpoint import find_usable, save_checkpoint
    from crisscross.train.trainer import resume_from

    save_checkpoint(tmp_path, 4, {"step": 4, "w": torch.zeros(1000)})
    good = find_latest(tmp_path)
    cut = good.with_name("step-000000008.pt")
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert find_latest(tmp_path) == cut  # by name it is the newest
    assert resume_from("auto", tmp_path) == good == find_usable(tmp_path)
    assert f"checkpoint {cut} is incomplete" in capsys.readouterr().err
    assert load_checkpoint(resume_from("auto", tmp_path))["step"] == 4


def test_failed_checkpoint_write_stops_every_rank_instead_of_hanging(tmp_path):
    """Under torchrun the ranks agree on the outcome of rank 0's write: both stop with the error
    (rank 1 says that rank 0 could not write), not with a lost-peer error at a barrier."""
    run_dir = tmp_path / "run"
    command = [*TORCHRUN, str(_wrapper(tmp_path)), "checkpoint", "8", *CLI[2:], f"run.dir={run_dir}",
               "model.norm=group", *SHORT]
    done = subprocess.run(command, env=_env(), timeout=180, capture_output=True, text=True)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"could not write checkpoint {run_dir / 'checkpoints' / 'step-000000008.pt'}" in out, out[-3000:]
    assert "rank 0 could not write it" in out  # rank 1's own one-line error
    assert _files(run_dir) == ["step-000000004.pt"]
