"""The trainer's hooks for the objectives of docs/methods.md (kept out of the loop's code).

* ``step_context``: the StepContext of an optimizer step (epoch = passes of ``epoch_size``);
* ``crop_seed``: one seed per (run seed, rank, step) for STiCA's feature-crop boxes, so a resumed
  run draws the boxes the uninterrupted run drew;
* ``model_kwargs``: the extra ``model.forward`` arguments a model needs (the crop seed);
* ``projection``: the projection ``z`` of a view's output, whatever the model's output type;
* ``init_from_run``: ``run.init_from`` with ``run.init_objective``: the whole model (heads too)
  and the objective state (AVID's memory banks and Z) of another run's newest checkpoint; the
  optimizer and schedule start fresh (CMA starts from an AVID run this way; not a resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from crisscross.train.distributed import DistEnv
from crisscross.train.objectives.base import StepContext


def step_context(step: int, steps_per_epoch: int, env: DistEnv) -> StepContext:
    return StepContext(step=step, epoch=step // max(steps_per_epoch, 1), env=env)


def crop_seed(seed: int, rank: int, step: int) -> int:
    return ((int(seed) * 1_000_003 + int(rank)) * 1_000_000_007 + int(step)) % (2**62)


def model_kwargs(raw: nn.Module, seed: int, ctx: StepContext) -> dict[str, Any]:
    if getattr(getattr(raw, "cfg", None), "crops", None) is None:
        return {}
    return {"crop_seed": crop_seed(seed, ctx.env.rank, ctx.step)}


def projection(output: Any) -> torch.Tensor:
    return output["z"] if isinstance(output, dict) else output[0]


def objective_state(objective: Any) -> dict[str, Any]:
    """What a checkpoint stores for the objective (identical on every rank: banks, Z, positives)."""
    return objective.state_dict()


def init_from_run(raw: nn.Module, objective: Any, source: str | Path) -> str:
    """Load another run's model (heads included) and objective state; returns a log line."""
    from crisscross.train.checkpoint import find_usable, load_checkpoint

    path = Path(source)
    file = find_usable(path) if path.is_dir() else path
    if file is None or not Path(file).is_file():
        raise FileNotFoundError(f"run.init_from {source}: no checkpoint there (run.init_objective needs a run "
                                "directory or a checkpoint file, not an export)")
    state = load_checkpoint(file, map_location="cpu")
    try:
        raw.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"run.init_from {file}: its model differs from this run's (model.* keys must match): "
                         f"{str(exc).splitlines()[0]}") from None
    saved = state.get("objective") or {}
    if not saved or not hasattr(objective, "load_init_state"):
        raise ValueError(f"run.init_from {file}: run.init_objective needs a checkpoint with objective state and an "
                         f"objective that takes it (AVID -> AVID/CMA); the checkpoint has {sorted(saved) or 'none'}")
    objective.load_init_state(saved)
    return f"model and objective state initialised from {file} (step {state['step']})"
