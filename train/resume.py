"""What a training checkpoint holds and how a run continues from one.

``train/checkpoint.py`` is the file layer (atomic write, retention, finding and loading files);
this module is the run layer on top of it: assembling the state of every rank (model, optimizer,
scaler, each rank's loader position and RNG states, config), writing it as a collective, choosing
the checkpoint ``--resume`` names, and putting a loaded state back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crisscross.train.checkpoint import (
    CheckpointWriteError,
    checkpoint_path,
    find_usable,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from crisscross.train.distributed import DistEnv, all_ranks_max, gather_objects

CHECKPOINT_FORMAT = 1


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
                     scaler: torch.amp.GradScaler, loader_state: Any, env: DistEnv,
                     objective_state: dict[str, Any] | None = None) -> Path | None:
    """Collective (every rank calls it): gathers loader/RNG states, rank 0 writes atomically.

    ``objective_state``: the objective's state (AVID's memory banks and Z, CMA's positive sets),
    identical on every rank, so rank 0's is stored; empty for CrissCross.

    A failed write (full disk, ...) stops every rank with ``CheckpointWriteError``: the ranks
    agree on the outcome instead of waiting at a barrier for a rank 0 that has gone."""
    loader_states = gather_objects(loader_state, env)
    rng_states = gather_objects(rng_state(env.device), env)
    path, error = None, None
    if env.is_main:
        state = {
            "format": CHECKPOINT_FORMAT, "step": step, "config": config, "world_size": env.world_size,
            "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "loader": loader_states, "rng": rng_states, "objective": objective_state or {},
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


def restore_checkpoint(checkpoint_file: str | Path, env: DistEnv, *, raw: nn.Module, optimizer: Any,
                       scaler: torch.amp.GradScaler, loader: Any, objective: Any = None) -> int:
    """Load a checkpoint into the model, optimizer, scaler, objective (memory banks, Z, positive
    sets) and (same world size) this rank's loader position and RNG states; returns the step to
    continue from."""
    state = load_checkpoint(checkpoint_file, map_location="cpu")  # RNG states must stay on the CPU
    raw.load_state_dict(state["model"])
    if objective is not None:
        objective.load_state_dict(state.get("objective") or {})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if state["world_size"] == env.world_size:
        loader.load_state_dict(state["loader"][env.rank])
        restore_rng(state["rng"][env.rank], env.device)
    elif env.is_main:
        print(f"warning: checkpoint was written by {state['world_size']} ranks, now {env.world_size}: "
              "the data order restarts (loader positions are per rank)")
    return int(state["step"])
