"""The objective interface shared by every method (CrissCross, AVID/CMA, SvaCLR, STiCA).

An objective is called once per step with the model's outputs and the batch, and may hold state
that must survive a resume (AVID's memory banks, the NCE constant Z, CMA's positive sets), so
besides ``__call__`` it has ``state_dict``/``load_state_dict`` (saved in every checkpoint) and an
``on_epoch_start`` hook (CMA re-mines its positive sets on a schedule).

Random draws an objective makes (AVID's negatives) come from a generator seeded by
``(seed, rank, step)``: a counter-based stream, so a resumed run draws exactly what the
uninterrupted run drew without saving generator state, and a step that is recomputed draws the
same again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from crisscross.train.distributed import DistEnv

Outputs = dict[str, dict[str, Any]]  # view -> {"z": projection, "y": encoder output, "p": ..., "crops": ...}


@dataclass
class StepContext:
    """Where the run is: optimizer step, epoch (passes of ``epoch_size``) and the process group."""

    step: int = 0
    epoch: int = 0
    env: DistEnv = field(default_factory=DistEnv)


class Objective(Protocol):
    views: tuple[str, ...]          # views the loader must produce and the model must encode
    batch_keys: tuple[str, ...]     # extra batch fields the objective reads ("index")

    def __call__(self, outputs: Outputs, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None: ...


class Stateless:
    """Mixin for objectives without state: nothing to save, nothing to do at epoch starts."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, but the checkpoint gives {sorted(state)}")

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        return None


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one (seed, rank, step, stream): the same draws whenever that step runs."""
    generator = torch.Generator()
    # mix into one 63-bit seed (distinct for all practical (seed, rank, step, stream) tuples)
    mixed = (((int(seed) * 1_000_003 + int(rank)) * 1_000_000_007 + int(step)) * 31 + int(stream)) % (2**63 - 1)
    generator.manual_seed(mixed)
    return generator
