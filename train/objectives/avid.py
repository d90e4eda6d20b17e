"""AVID (Cross / Self / Joint) and AVID+CMA as objectives of the common interface.

Both read the projections ``z`` of views ``v1`` and ``a1`` (l2-normalised here) and the
per-sample instance index ``batch["index"]`` (its row in the memory banks).

* ``avid`` (Cross-AVID by default, the method of every released AVID model):
  L = 1/2 [ L_NCE(s(v, M^a_y); s(v, M^a_n)) + L_NCE(s(a, M^v_y); s(a, M^v_n)) ]          (A2)
  ``mode: self`` uses the within-modal banks (v with M^v, a with M^a); ``joint`` mixes both with
  coefficients ``x_coeff``/``w_coeff`` normalised by their sum.
* ``avid_cma``: the cross-modal instance term with negatives drawn outside each sample's positive
  set P (and outside its own instance), plus a within-modal term whose positives are P (mean over
  P) and whose negatives are the first ``num_negatives_within`` of those draws:
  L = inst_coeff * L_inst + pos_coeff * L_pos, coefficients normalised by their sum       (A6)
  P is re-mined from the memory banks (``find_positives``) at the first epoch hook and whenever
  ``epoch % resample_every_epochs == 0``.

The memory banks are updated after the scores (scores always use the pre-update rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from crisscross.config import from_known_keys
from crisscross.train.objectives.base import StepContext, step_generator
from crisscross.train.objectives.nce import (
    AGREEMENTS,
    MemoryBank,
    PartitionConstant,
    find_positives,
    nce_loss,
    negatives_excluding_self,
    negatives_excluding_sets,
)

MODES = ("cross", "self", "joint")


@dataclass
class AVIDConfig:
    mode: str = "cross"            # cross (Cross-AVID, [A] xModal_coeff=1, wModal_coeff=0) | self | joint
    num_negatives: int = 1024      # K ([A] Cross-N1024 configs)
    temperature: float = 0.07      # [A] criterions/avid.py, hard-coded
    momentum: float = 0.5          # memory EMA, every released [A] config (the class default 0.9 is unused)
    x_coeff: float = 1.0           # joint mode: weight of the cross-modal term
    w_coeff: float = 0.0           # joint mode: weight of the within-modal term
    seed: int = 0                  # memory initialisation and negative draws (with rank and step)
    instance_unit: str = "sample"  # memory row per shard sample, or per source video ([A]: per video)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"objective.avid.mode must be one of {MODES}, got {self.mode!r}")
        if self.num_negatives < 1 or self.temperature <= 0:
            raise ValueError("objective.avid.num_negatives must be >= 1 and temperature > 0")
        if self.instance_unit not in ("sample", "source"):
            raise ValueError(f"objective.avid.instance_unit must be sample or source, got {self.instance_unit!r}")
        if self.mode == "joint" and self.x_coeff + self.w_coeff <= 0:
            raise ValueError("objective.avid: joint mode needs x_coeff + w_coeff > 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AVIDConfig:
        return from_known_keys(cls, values, "objective.avid")


@dataclass
class CMAConfig(AVIDConfig):
    agreement: str = "consensus"   # (A3) consensus = min(s^v, s^a) | union | video | audio
    k: int = 32                    # positives per instance ([A] Top32)
    num_negatives_within: int = 64  # negatives of the within-modal positive term ([A] PosW-N64)
    resample_every_epochs: int = 50  # passes over the data between re-minings ([A]: 5 x 10 clips/video)
    inst_coeff: float = 1.0        # [A] xModalInstCoeff
    pos_coeff: float = 1.0         # [A] wModalPosCoeff
    exclude_self: bool = True      # also keep the anchor's own instance out of its negatives ([A] does not)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.agreement not in AGREEMENTS:
            raise ValueError(f"objective.avid_cma.agreement must be one of {AGREEMENTS}, got {self.agreement!r}")
        if not 1 <= self.num_negatives_within <= self.num_negatives:
            raise ValueError("objective.avid_cma.num_negatives_within must lie in [1, num_negatives]")
        if self.k < 1 or self.resample_every_epochs < 1 or self.inst_coeff + self.pos_coeff <= 0:
            raise ValueError("objective.avid_cma: k and resample_every_epochs must be >= 1, coefficients sum > 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CMAConfig:
        return from_known_keys(cls, values, "objective.avid_cma")


def _scores(x: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, tau: float) -> torch.Tensor:
    """<x_b, bank[index[b, j]]> / tau for index [B, J] -> [B, J] (bank rows are constants)."""
    rows = bank[index.to(bank.device)]                                   # [B, J, D], a copy
    return torch.einsum("bd,bjd->bj", x, rows) / tau


class AVIDObjective:
    """Cross/Self/Joint-AVID with memory banks; see the module docstring."""

    views = ("v1", "a1")
    batch_keys = ("index",)

    def __init__(self, cfg: AVIDConfig, num_instances: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.memory = MemoryBank(num_instances, dim, cfg.momentum, seed=cfg.seed, device=device)
        self.z = PartitionConstant()
        self.instances: Any = None  # key -> row (InstanceIndex) for batches without "index"

    @property
    def num_instances(self) -> int:
        return self.memory.num_items

    def _embeddings(self, outputs: dict[str, dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(outputs["v1"]["z"].float(), dim=1), F.normalize(outputs["a1"]["z"].float(), dim=1)

    def _index(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        if "index" in batch:
            index = torch.as_tensor(batch["index"]).long()
        elif self.instances is not None:
            index = self.instances(batch["key"])
        else:
            raise KeyError("AVID/CMA need the batch's instance indices (batch['index'] or keys and an InstanceIndex)")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_instances):
            raise ValueError(f"instance index out of range [0, {self.num_instances}): the batch does not come "
                             "from the shards the memory bank was sized for")
        return index.to(device)

    def _pair_loss(self, x: torch.Tensor, bank: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                   ctx: StepContext) -> torch.Tensor:
        tau = self.cfg.temperature
        s_pos, s_neg = _scores(x, bank, pos, tau), _scores(x, bank, neg, tau)
        return nce_loss(s_pos, s_neg, self.z.get(s_neg, ctx.env))

    def _directions(self) -> dict[str, float]:
        """(anchor modality, bank modality) term name -> weight."""
        cross = {"v2a": 0.5, "a2v": 0.5}
        within = {"v2v": 0.5, "a2a": 0.5}
        if self.cfg.mode == "cross":
            return cross
        if self.cfg.mode == "self":
            return within
        total = self.cfg.x_coeff + self.cfg.w_coeff
        return {**{k: w * self.cfg.x_coeff / total for k, w in cross.items()},
                **{k: w * self.cfg.w_coeff / total for k, w in within.items()}}

    def __call__(self, outputs, batch, ctx: StepContext):
        v, a = self._embeddings(outputs)
        index = self._index(batch, v.device)
        generator = step_generator(self.cfg.seed, ctx.env.rank, ctx.step)
        neg = negatives_excluding_self(index, self.num_instances, self.cfg.num_negatives, generator)
        pos = index.view(-1, 1)
        anchors, banks = {"v": v, "a": a}, {"v": self.memory.mem["video"], "a": self.memory.mem["audio"]}
        terms = {name: self._pair_loss(anchors[name[0]], banks[name[2]], pos, neg, ctx)
                 for name, weight in self._directions().items() if weight > 0}
        total = sum(self._directions()[n] * t for n, t in terms.items())
        self.memory.update({"video": v, "audio": a}, index, ctx.env)
        logs = {f"loss/inst_{n}": t.detach() for n, t in terms.items()}
        logs["nce/Z"] = self.z.value.to(v.device, torch.float32)
        return total, logs

    def state_dict(self) -> dict[str, Any]:
        return {"name": "avid", "memory": self.memory.state_dict(), "nce": self.z.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])
        self.z.load_state_dict(state["nce"])

    def load_init_state(self, state: dict[str, Any]) -> None:
        """Initialisation from another run's objective state (``run.init_objective``)."""
        AVIDObjective.load_state_dict(self, state)

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        return None


class CMAObjective(AVIDObjective):
    """AVID+CMA: cross-modal instance term + within-modal term over agreement positives (A6)."""

    def __init__(self, cfg: CMAConfig, num_instances: int, dim: int, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, num_instances, dim, device)
        if cfg.k + 1 >= num_instances:
            raise ValueError(f"objective.avid_cma.k={cfg.k} needs more than k+1 instances, the data has {num_instances}")
        self.cfg: CMAConfig = cfg
        self.positives: torch.Tensor | None = None   # [N, k] sorted instance indices
        self.mined_at_epoch = -1

    def mine(self, ctx: StepContext) -> None:
        self.positives = find_positives(self.memory.mem["video"], self.memory.mem["audio"], self.cfg.agreement,
                                        self.cfg.k, ctx.env).cpu()

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        """Mine at the first hook of a run (fresh or initialised from AVID) and every
        ``resample_every_epochs`` epochs; a resumed run restores P and mines on the same schedule."""
        due = epoch > 0 and epoch % self.cfg.resample_every_epochs == 0 and epoch != self.mined_at_epoch
        if self.positives is None or due:
            self.mine(ctx)
            self.mined_at_epoch = epoch

    def negatives(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        assert self.positives is not None, "CMA positives are mined at the first epoch hook"
        excluded = self.positives[index.cpu()]
        if self.cfg.exclude_self:
            excluded = torch.cat([excluded, index.cpu().view(-1, 1)], dim=1).sort(dim=1).values
        return negatives_excluding_sets(excluded, self.num_instances, self.cfg.num_negatives, generator)

    def __call__(self, outputs, batch, ctx: StepContext):
        if self.positives is None:
            self.on_epoch_start(ctx.epoch, ctx)
        v, a = self._embeddings(outputs)
        index = self._index(batch, v.device)
        neg = self.negatives(index, step_generator(self.cfg.seed, ctx.env.rank, ctx.step))
        neg_within = neg[:, :self.cfg.num_negatives_within]
        positives = self.positives[index.cpu()]
        mem_v, mem_a = self.memory.mem["video"], self.memory.mem["audio"]
        inst_v2a = self._pair_loss(v, mem_a, index.view(-1, 1), neg, ctx)
        inst_a2v = self._pair_loss(a, mem_v, index.view(-1, 1), neg, ctx)
        pos_v2v = self._pair_loss(v, mem_v, positives, neg_within, ctx)
        pos_a2a = self._pair_loss(a, mem_a, positives, neg_within, ctx)
        l_inst, l_pos = (inst_v2a + inst_a2v) / 2, (pos_v2v + pos_a2a) / 2
        weight = self.cfg.inst_coeff + self.cfg.pos_coeff
        total = (self.cfg.inst_coeff * l_inst + self.cfg.pos_coeff * l_pos) / weight
        self.memory.update({"video": v, "audio": a}, index, ctx.env)
        logs = {"loss/inst_v2a": inst_v2a.detach(), "loss/inst_a2v": inst_a2v.detach(),
                "loss/pos_v2v": pos_v2v.detach(), "loss/pos_a2a": pos_a2a.detach(),
                "nce/Z": self.z.value.to(v.device, torch.float32)}
        return total, logs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(name="avid_cma", positives=None if self.positives is None else self.positives.clone(),
                     mined_at_epoch=self.mined_at_epoch)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        positives = state.get("positives")
        self.positives = None if positives is None else torch.as_tensor(positives).long().clone()
        self.mined_at_epoch = int(state.get("mined_at_epoch", -1))
        if self.positives is not None and self.positives.shape != (self.num_instances, self.cfg.k):
            self.positives, self.mined_at_epoch = None, -1  # another k: re-mine at the next hook

    def load_init_state(self, state: dict[str, Any]) -> None:
        """Initialisation from another run (an AVID run for CMA): memory banks and Z; the positive
        sets are mined afresh from those banks at the first epoch hook."""
        AVIDObjective.load_state_dict(self, state)
        self.positives, self.mined_at_epoch = None, -1
