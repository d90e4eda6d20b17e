"""Optimization of Table S10: Adam with four parameter groups, one LR function, and LARC.

The other seed systems (docs/methods.md) add SGD with momentum, a warmup that starts from
``warmup_start_lr`` instead of 0, and a ``constant`` schedule after the warmup.

Groups: ``video_base`` (video encoder + projector), ``video_pred``, ``audio_base``, ``audio_pred``.
Base groups follow a per-iteration linear warmup from 0 then a cosine from ``lr`` to ``end_lr``;
predictor groups keep a constant ``pred_lr`` (SimSiam's "fix_pred_lr", the official code's
``constant_*_predictor_lr: true``).

LARC (You et al. 2017) in clip mode with trust 0.001, written after NVIDIA apex's ``LARC`` (which
the paper cites) so that apex is not a dependency: per parameter tensor the gradient (plus the
weight decay term, which LARC absorbs) is scaled by ``min(trust*|w| / (|g| + wd*|w| + eps) / lr, 1)``
before the wrapped optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

GROUP_NAMES = ("video_base", "video_pred", "audio_base", "audio_pred")


@dataclass(frozen=True)
class Schedule:
    """Where the LR function is evaluated: all in optimizer steps (iterations)."""

    lr: float
    end_lr: float
    pred_lr: float
    warmup_steps: int
    total_steps: int
    warmup_start_lr: float = 0.0   # warmup starts here (SvaCLR 0.064, STiCA 0.01; CrissCross 0)
    kind: str = "cosine"           # cosine to end_lr | constant (AVID's multistep gamma 1, STiCA's code)


SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "sgd")


def learning_rate(step: int, group: str, schedule: Schedule) -> float:
    """The one LR function: warmup + cosine for base groups, constant for predictor groups."""
    if group.endswith("_pred"):
        return schedule.pred_lr
    if step < schedule.warmup_steps:
        start = schedule.warmup_start_lr
        return start + (schedule.lr - start) * step / schedule.warmup_steps
    if schedule.kind == "constant":
        return schedule.lr
    decay_steps = max(schedule.total_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / decay_steps, 1.0)
    return schedule.end_lr + 0.5 * (schedule.lr - schedule.end_lr) * (1 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer | LARC, step: int, schedule: Schedule) -> dict[str, float]:
    rates = {}
    for group in optimizer.param_groups:
        group["lr"] = rates[group["name"]] = learning_rate(step, group["name"], schedule)
    return rates


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The four named groups of a ``CrissCrossModel``; frozen (unused-modality) params are left out."""
    groups, seen = [], set()

    def fresh(params) -> list[torch.nn.Parameter]:  # a shared predictor belongs to the video group only
        out = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    for modality in ("video", "audio"):
        branch = getattr(model, modality)
        base = fresh(p for m in (branch.encoder, branch.projector) for p in m.parameters())
        pred = fresh(branch.predictor.parameters())
        for suffix, params in (("base", base), ("pred", pred)):
            if params:
                groups.append({"name": f"{modality}_{suffix}", "params": params})
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


class LARC:
    """Layer-wise adaptive rate clipping around any optimizer (apex ``LARC`` semantics).

    Duck-types the optimizer API the trainer and ``torch.amp.GradScaler`` use (``param_groups``,
    ``step``, ``zero_grad``, ``state_dict``), so GradScaler unscales before LARC reads grad norms.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, trust_coefficient: float = 1e-3,
                 clip: bool = True, eps: float = 1e-8) -> None:
        self.optim = optimizer
        self.trust_coefficient = trust_coefficient
        self.clip = clip
        self.eps = eps

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optim.param_groups

    @property
    def state(self) -> Any:
        return self.optim.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state)

    @torch.no_grad()
    def step(self) -> None:
        saved_decay = []
        for group in self.optim.param_groups:
            weight_decay = group.get("weight_decay", 0.0)
            saved_decay.append(weight_decay)
            group["weight_decay"] = 0.0  # absorbed into the gradient below
            for p in group["params"]:
                if p.grad is not None:
                    self._scale_gradient(p, weight_decay, group["lr"])
        try:
            self.optim.step()
        finally:
            for group, weight_decay in zip(self.optim.param_groups, saved_decay):
                group["weight_decay"] = weight_decay

    def _scale_gradient(self, p: torch.Tensor, weight_decay: float, lr: float) -> None:
        param_norm, grad_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
        local = self.trust_coefficient * param_norm / (grad_norm + param_norm * weight_decay + self.eps)
        if self.clip:
            # so that lr * factor == min(local_lr, lr); lr == 0 (first warmup step) means no step anyway
            local = torch.clamp(local / lr, max=1.0) if lr > 0 else torch.ones_like(local)
        # as in apex, a zero weight or gradient (fresh bias, dead unit) is left untouched
        scaled = (param_norm > 0) & (grad_norm > 0)
        factor = torch.where(scaled, local, torch.ones_like(local))
        decay = torch.where(scaled, torch.full_like(local, weight_decay), torch.zeros_like(local))
        p.grad.add_(p * decay).mul_(factor)


def build_optimizer(groups: Iterable[dict[str, Any]], *, weight_decay: float, betas: tuple[float, float],
                    larc: bool, larc_trust: float, larc_clip: bool, fused: bool = False, name: str = "adam",
                    momentum: float = 0.9):
    """Adam (CrissCross, AVID) or SGD with momentum (SvaCLR, STiCA), optionally inside LARC."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        inner = torch.optim.SGD(list(groups), lr=0.0, momentum=momentum, weight_decay=weight_decay, **extra)
    else:
        inner = torch.optim.Adam(list(groups), lr=0.0, betas=tuple(betas), weight_decay=weight_decay, **extra)
    return LARC(inner, trust_coefficient=larc_trust, clip=larc_clip) if larc else inner
