"""``objective.name`` -> the objective object the trainer calls (docs/methods.md)."""

from __future__ import annotations

from typing import Any

import torch

from crisscross.train.objective import CrissCrossObjective, ObjectiveConfig
from crisscross.train.objectives.avid import AVIDObjective, CMAObjective
from crisscross.train.objectives.base import Stateless, StepContext
from crisscross.train.objectives.contrastive import STiCAObjective, SvaCLRObjective


class CrissCrossAdapter(Stateless):
    """CrissCross (stateless, outputs {view: (z, p)}) behind the common interface; same numbers."""

    batch_keys = ()

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        self.views = tuple(cfg.views)
        self.inner = CrissCrossObjective(cfg)

    def __call__(self, outputs: dict[str, Any], batch: dict[str, Any], ctx: StepContext):
        return self.inner(outputs)


def embedding_dim(model_cfg: dict[str, Any]) -> int:
    from crisscross.train.models import DEFAULT_HEAD_DIMS

    dims = list(model_cfg.get("head_dims") or []) or DEFAULT_HEAD_DIMS.get(model_cfg.get("head"), [])
    return int(dims[-1]) if dims else int(model_cfg["proj_dim"])


def build_objective(config: dict[str, Any], device: torch.device | str = "cpu") -> Any:
    """The objective of a resolved training config (a plain dict)."""
    cfg = ObjectiveConfig.from_dict(config["objective"])
    if cfg.name == "crisscross":
        return CrissCrossAdapter(cfg)
    if cfg.name in ("avid", "avid_cma"):
        from crisscross.train.instances import InstanceIndex

        instances = InstanceIndex.for_run(config, unit=cfg.method.instance_unit)
        cls = AVIDObjective if cfg.name == "avid" else CMAObjective
        objective = cls(cfg.method, len(instances), embedding_dim(config["model"]), device)
        objective.instances = instances
        return objective
    if cfg.name == "svaclr":
        return SvaCLRObjective(cfg.method)
    return STiCAObjective(cfg.method)
