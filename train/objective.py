"""The CrissCross objective (main paper eqs. 1-5) with configurable terms (Table 1).

    D(p, z)     = -cos(p, stopgrad(z))                                           (eq. 1)
    L_xy        = D(p_x, z_y)/2 + D(p_y, z_x)/2          a symmetric "pair loss"
    L_intra     = (L_v1v2 + L_a1a2) / 2                                          (eq. 2)
    L_sync      = (L_v1a1 + L_v2a2) / 2                                          (eq. 3)
    L_async     = (L_v1a2 + L_v2a1) / 2                                          (eq. 4)
    L_CrissCross = (L_intra + L_sync + L_async) / 3  = mean of the six pair losses  (eq. 5)

Each of eqs. 2-4 is written in the paper as (four halved D terms)/2, i.e. the mean of two pair
losses, as above. The supplement's pseudocode (Algorithm 1) differs: it drops the outer /2 of
L_intra and has a stray ``Lv2a2`` term in L_sync; we follow the equations, which is also what the
official code computes (the sum of the six pair losses divided by their number).

A configuration lists *terms* from {v1v2, a1a2, intra, sync, async}; each term is the mean of its
pair losses and the total is the mean (default) or the sum of the terms, so every row of Table 1
is a config, e.g. ``[v1v2]``, ``[intra]``, ``[sync, intra]``, ``[v1v2, sync, async]`` and the
default ``[intra, sync, async]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from crisscross.train.models import view_modality
from crisscross.train.objectives.avid import AVIDConfig, CMAConfig
from crisscross.train.objectives.contrastive import STiCAConfig, SvaCLRConfig

# pair name -> (view x, view y)
PAIRS: dict[str, tuple[str, str]] = {
    "v1v2": ("v1", "v2"),
    "a1a2": ("a1", "a2"),
    "v1a1": ("v1", "a1"),
    "v2a2": ("v2", "a2"),
    "v1a2": ("v1", "a2"),
    "v2a1": ("v2", "a1"),
}
# term name -> the pair losses it averages
TERMS: dict[str, tuple[str, ...]] = {
    "v1v2": ("v1v2",),
    "a1a2": ("a1a2",),
    "intra": ("v1v2", "a1a2"),
    "sync": ("v1a1", "v2a2"),
    "async": ("v1a2", "v2a1"),
}
REDUCTIONS = ("mean", "sum")
# objective.name -> (views the method encodes, its section); crisscross's views follow its terms
METHODS: dict[str, tuple[tuple[str, ...], type | None]] = {
    "crisscross": ((), None),
    "avid": (("v1", "a1"), AVIDConfig),
    "avid_cma": (("v1", "a1"), CMAConfig),
    "svaclr": (("v1", "v2", "a1", "a2"), SvaCLRConfig),
    "stica": (("v1", "v2", "a1"), STiCAConfig),
}


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 1, averaged over the batch: -cos(p, z) with the stop-gradient on z."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def pair_loss(p_x: torch.Tensor, z_x: torch.Tensor, p_y: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
    """Symmetrized loss of views x and y: each predicts the other's (stopped) projection."""
    return negative_cosine(p_x, z_y) / 2 + negative_cosine(p_y, z_x) / 2


@dataclass
class ObjectiveConfig:
    """``name`` picks the method (docs/methods.md); ``terms``/``reduce`` configure CrissCross and
    the sections ``avid``, ``avid_cma``, ``svaclr``, ``stica`` the other methods."""

    name: str = "crisscross"
    terms: list[str] = field(default_factory=lambda: ["intra", "sync", "async"])
    reduce: str = "mean"
    avid: AVIDConfig = field(default_factory=AVIDConfig)
    avid_cma: CMAConfig = field(default_factory=CMAConfig)
    svaclr: SvaCLRConfig = field(default_factory=SvaCLRConfig)
    stica: STiCAConfig = field(default_factory=STiCAConfig)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"objective.name must be one of {sorted(METHODS)}, got {self.name!r}")
        for section, (_, cls) in METHODS.items():
            if cls is not None and isinstance(getattr(self, section), dict):
                setattr(self, section, cls.from_dict(getattr(self, section)))
        if not self.terms:
            raise ValueError("objective.terms is empty")
        unknown = [t for t in self.terms if t not in TERMS]
        if unknown:
            raise ValueError(f"unknown objective terms {unknown}; choose from {sorted(TERMS)}")
        if len(set(self.terms)) != len(self.terms):
            raise ValueError(f"objective.terms repeats a term: {self.terms}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"objective.reduce must be one of {REDUCTIONS}, got {self.reduce!r}")

    @classmethod
    def from_dict(cls, values: dict | ObjectiveConfig) -> ObjectiveConfig:
        if isinstance(values, ObjectiveConfig):
            return values
        unknown = sorted(set(values) - {"name", "terms", "reduce", *(m for m, (_, c) in METHODS.items() if c)})
        if unknown:
            raise ValueError(f"unknown objective config keys {unknown}")
        return cls(**values)

    @property
    def method(self) -> Any:
        """The chosen method's section (None for crisscross)."""
        return getattr(self, self.name) if METHODS[self.name][1] is not None else None

    @property
    def pairs(self) -> list[str]:
        """Pair losses needed by the configured terms, in a fixed order."""
        needed = {pair for term in self.terms for pair in TERMS[term]}
        return [p for p in PAIRS if p in needed]

    @property
    def views(self) -> list[str]:
        """Views that must be computed: uni-modal rows need only one modality."""
        if self.name != "crisscross":
            return list(METHODS[self.name][0])
        needed = {view for pair in self.pairs for view in PAIRS[pair]}
        return [v for v in ("v1", "v2", "a1", "a2") if v in needed]

    @property
    def modalities(self) -> list[str]:
        return sorted({view_modality(v) for v in self.views}, reverse=True)


class CrissCrossObjective:
    """Callable: ``outputs`` {view: (z, p)} -> (total loss, {name: detached sub-loss})."""

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg

    def __call__(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        missing = [v for v in self.cfg.views if v not in outputs]
        if missing:
            raise KeyError(f"objective needs views {missing}")
        pairs = {}
        for name in self.cfg.pairs:
            x, y = PAIRS[name]
            (z_x, p_x), (z_y, p_y) = outputs[x], outputs[y]
            pairs[name] = pair_loss(p_x, z_x, p_y, z_y)
        terms = {t: torch.stack([pairs[p] for p in TERMS[t]]).mean() for t in self.cfg.terms}
        stacked = torch.stack(list(terms.values()))
        total = stacked.mean() if self.cfg.reduce == "mean" else stacked.sum()
        logs = {f"loss/L_{k}": v.detach() for k, v in pairs.items()}
        logs.update({f"loss/term_{k}": v.detach() for k, v in terms.items()})
        return total, logs


@torch.no_grad()
def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """SimSiam's collapse monitor: per-dimension std of l2-normalized z over the batch, averaged.

    About 1/sqrt(dim) for healthy (spread-out) outputs and 0 when every sample maps to one point.
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean()
