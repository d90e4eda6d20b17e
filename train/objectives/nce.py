"""Memory banks and the non-parametric NCE of AVID / AVID-CMA (Morgado et al.; the seeds carry only
the supplement, so every number here is the official code's: docs/methods.md).

    h(s)          = e^s / (e^s + K Z)                 P(data | pair), s = <x, m> / tau
    L_NCE(S+, S-) = mean_batch[ -mean_{p in S+} log h(s+_p) - sum_{k=1..K} log(1 - h(s-_k)) ]   (A1)

Z is set once, on the first call, to the mean of exp(s-) over the first batch's negatives (the mean
over ranks of each rank's mean) and then frozen; it is part of the objective's state.

``MemoryBank`` keeps one unit-norm row per training instance and modality, updated after the
scores as ``m <- n(mu m + (1 - mu) x)`` with every rank's rows (so the banks stay identical on
all ranks). ``find_positives`` is CMA's cross-modal agreement mining.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from crisscross.train.distributed import DistEnv, all_gather_cat, reduce_mean

AGREEMENTS = ("consensus", "union", "video", "audio")


def nce_loss(pos: torch.Tensor, neg: torch.Tensor, z: float | torch.Tensor) -> torch.Tensor:
    """(A1) with the temperature already folded into the scores. ``pos`` [B, P], ``neg`` [B, K].

    Written with logaddexp so that large scores (1/tau = 14.3) cannot overflow exp()."""
    pos, neg = pos.float(), neg.float()
    log_kz = math.log(neg.shape[1]) + torch.log(torch.as_tensor(z, dtype=torch.float32, device=neg.device))
    log_h_pos = pos - torch.logaddexp(pos, log_kz)          # log h(s+)
    log_noise = log_kz - torch.logaddexp(neg, log_kz)       # log(1 - h(s-))
    return (-log_h_pos.mean(dim=1) - log_noise.sum(dim=1)).mean()


class PartitionConstant:
    """Z of (A1): unset (-1) until the first call, then frozen; saved and restored."""

    def __init__(self) -> None:
        self.value = torch.tensor(-1.0, dtype=torch.float64)

    @property
    def is_set(self) -> bool:
        return bool(self.value.item() > 0)

    def get(self, neg_scores: torch.Tensor, env: DistEnv) -> torch.Tensor:
        if not self.is_set:
            local = neg_scores.detach().double().exp().mean().reshape(1).to(neg_scores.device)
            self.value = reduce_mean(local, env)[0].cpu()
        return self.value.to(device=neg_scores.device, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"Z": self.value.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = torch.as_tensor(state["Z"], dtype=torch.float64).clone()


def unique_last(index: torch.Tensor) -> torch.Tensor:
    """Positions of the last occurrence of each distinct value of ``index`` (1-d): with duplicate
    instances in one (gathered) batch the last write wins, deterministically."""
    positions = torch.arange(index.numel(), device=index.device)
    values, inverse = torch.unique(index, return_inverse=True)
    last = torch.full((values.numel(),), -1, dtype=torch.long, device=index.device)
    return last.scatter_reduce(0, inverse, positions, reduce="amax")


class MemoryBank:
    """``mem[modality]``: [N, dim] float32 unit rows, one per training instance."""

    MODALITIES = ("video", "audio")

    def __init__(self, num_items: int, dim: int, momentum: float = 0.5, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if num_items < 2:
            raise ValueError(f"a memory bank needs at least 2 instances, got {num_items}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must lie in [0, 1), got {momentum}")
        self.num_items, self.dim, self.momentum = int(num_items), int(dim), float(momentum)
        generator = torch.Generator().manual_seed(int(seed))  # same seed -> same bank on every rank
        self.mem = {m: F.normalize(torch.randn(num_items, dim, generator=generator), dim=1).to(device)
                    for m in self.MODALITIES}

    def to(self, device: torch.device | str) -> MemoryBank:
        self.mem = {m: t.to(device) for m, t in self.mem.items()}
        return self

    @torch.no_grad()
    def update(self, rows: dict[str, torch.Tensor], index: torch.Tensor, env: DistEnv) -> None:
        """Blend every rank's embeddings into their instances' rows (call after the scores)."""
        index = all_gather_cat(index.to(self.mem["video"].device).long(), env)
        keep = unique_last(index)
        index = index[keep]
        for modality, x in rows.items():
            x = all_gather_cat(F.normalize(x.detach().float(), dim=1), env)[keep]
            bank = self.mem[modality]
            blended = self.momentum * bank[index] + (1.0 - self.momentum) * x
            bank.index_copy_(0, index, F.normalize(blended, dim=1))

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, **{f"mem_{m}": t.detach().cpu().clone() for m, t in self.mem.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for modality in self.MODALITIES:
            loaded = state[f"mem_{modality}"]
            if tuple(loaded.shape) != (self.num_items, self.dim):
                raise ValueError(f"memory bank {modality}: checkpoint has shape {tuple(loaded.shape)}, this run "
                                 f"needs ({self.num_items}, {self.dim}) (number of instances, embedding size): "
                                 "the run's data or model differ from the checkpoint's")
            self.mem[modality] = loaded.to(self.mem[modality].device, torch.float32).clone()


# ---------------------------------------------------------------------------------- negatives
def negatives_excluding_self(index: torch.Tensor, num_items: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[B, k] draws, uniform with replacement over {0..N-1} minus the sample's own instance."""
    draws = torch.randint(0, num_items - 1, (index.numel(), k), generator=generator)
    return draws + (draws >= index.cpu().view(-1, 1)).long()


def negatives_excluding_sets(excluded: torch.Tensor, num_items: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[B, k] draws, uniform over {0..N-1} minus each row of ``excluded`` ([B, e], sorted, distinct).

    r ~ U{0..N-e-1} is mapped onto the complement by r + #{j : r >= P_j - j} (a bijection)."""
    excluded = excluded.cpu().long()
    e = excluded.shape[1]
    if num_items - e < 1:
        raise ValueError(f"nothing left to draw negatives from: {num_items} instances, {e} excluded")
    draws = torch.randint(0, num_items - e, (excluded.shape[0], k), generator=generator)
    thresholds = excluded - torch.arange(e).view(1, -1)                      # [B, e]
    return draws + (draws.unsqueeze(-1) >= thresholds.unsqueeze(1)).sum(-1)


# ---------------------------------------------------------------------------------- CMA mining
def agreement_scores(sim_v: torch.Tensor, sim_a: torch.Tensor, kind: str) -> torch.Tensor:
    """(A3): consensus = min of the two modalities' similarities, union = max, or one of them."""
    if kind == "consensus":
        return torch.minimum(sim_v, sim_a)
    if kind == "union":
        return torch.maximum(sim_v, sim_a)
    if kind == "video":
        return sim_v
    if kind == "audio":
        return sim_a
    raise ValueError(f"unknown agreement {kind!r}; choose from {AGREEMENTS}")


@torch.no_grad()
def find_positives(mem_v: torch.Tensor, mem_a: torch.Tensor, kind: str, k: int, env: DistEnv | None = None,
                   chunk: int = 4096) -> torch.Tensor:
    """(A4): for every instance, the k others with the highest agreement, as sorted indices [N, k].

    The diagonal is masked (equal to [A]'s top-(k+1) minus the first unless rows are duplicated);
    rows are split over ranks (rank r takes rows r, r+W, ...) and gathered, chunk by chunk, so
    the N x N similarities never exist whole."""
    env = env or DistEnv()
    n = mem_v.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"CMA needs 1 <= k < number of instances, got k={k}, N={n}")
    mine = torch.arange(env.rank, n, env.world_size, device=mem_v.device)
    per_rank = -(-n // env.world_size)
    out = torch.zeros(per_rank, k, dtype=torch.long, device=mem_v.device)
    for start in range(0, mine.numel(), chunk):
        rows = mine[start:start + chunk]
        rho = agreement_scores(mem_v[rows] @ mem_v.T, mem_a[rows] @ mem_a.T, kind)
        rho[torch.arange(rows.numel(), device=rho.device), rows] = -math.inf
        out[start:start + rows.numel()] = rho.topk(k, dim=1).indices.sort(dim=1).values
    gathered = all_gather_cat(out, env).view(env.world_size, per_rank, k)
    # row i was computed by rank i % W at position i // W
    i = torch.arange(n, device=mem_v.device)
    return gathered[i % env.world_size, i // env.world_size]
