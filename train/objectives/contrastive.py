"""InfoNCE-family objectives with negatives from the global batch: SvaCLR's SoftInfoNCE and
STiCA's two-temperature cross-modal + feature-crop objective.

    NCE(q, k; tau) = -mean_i log softmax_j(<q_i, k_j> / tau)[i]       keys k from every rank

q and k are l2-normalised projections ``z``. ``gather_keys`` (train/distributed.py) brings every
rank's keys; with ``detach_keys`` they are constants (GDT/STiCA convention), otherwise gradients
reach them on their own rank, so N ranks of B give the gradients of one process of N*B.

SvaCLR (SpeedAug paper eqs. 1-3, reading R1 of docs/methods.md): for each of the four audio/video
view pairs (p, q) in {1, 2}^2, the audio-anchored InfoNCE l_i(a_p, v_q) is weighted per sample by

    lambda_i^{pq} = softmax_{(p,q)}(S_i)^{pq} / softmax_{(p,q)}(S_i)^{11} = exp(S_i^{pq} - S_i^{11}),
    S_i^{pq} = cos(y^a_{i,p}, y^v_{i,q})   (encoder outputs, the paper's identity l(.))

so the un-augmented pair has weight 1 (the paper: "normalized to 1"), and L = mean over the pairs of
mean_i(lambda * l). ``mode: soft_targets`` is reading R2 (the literal double sum of eq. 3): soft
cross-entropy targets softmax_j(cos(y^a_i, y^v_j)) per pair, one-hot for (1, 1); ``mode: none`` is
plain InfoNCE over the four pairs (the paper's InfoNCE baseline).

STiCA (appendix of Patrick et al. 2021 + the official GDT code; docs/methods.md):
    L_av   = 1/2 sum_{c=1,2} sym(z(F^c), z_a; tau_cross)                        sym(x,y) = (NCE(y,x)+NCE(x,y))/2
    L_crop = mean over terms of sym(large_2(F^2), large_2(F^1); tau_within)     (spatial and temporal)
                               and NCE(small_j(F^2), large_i(F^1); tau_within)  for every i, j
    L      = alpha L_av + (1 - alpha) L_crop
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from crisscross.config import from_known_keys
from crisscross.train.distributed import DistEnv, gather_keys
from crisscross.train.objectives.base import Stateless, StepContext

SVACLR_MODES = ("pairwise_scalar", "soft_targets", "none")
SVACLR_PAIRS = ("a1v1", "a1v2", "a2v1", "a2v2")


def info_nce(q: torch.Tensor, k: torch.Tensor, tau: float, env: DistEnv | None = None, *, detach_keys: bool,
             targets: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample InfoNCE [B] of queries ``q`` against every rank's keys ``k`` (positives on the
    diagonal). ``targets`` [B, global B] replaces the one-hot target by a soft one."""
    env = env or DistEnv()
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    keys, offset = gather_keys(k, env, detach=detach_keys)
    log_p = (q @ keys.T / tau).log_softmax(dim=1)
    if targets is not None:
        return -(targets * log_p).sum(dim=1)
    rows = torch.arange(q.shape[0], device=q.device)
    return -log_p[rows, rows + offset]


def nce_mean(q: torch.Tensor, k: torch.Tensor, tau: float, env: DistEnv | None, detach_keys: bool) -> torch.Tensor:
    return info_nce(q, k, tau, env, detach_keys=detach_keys).mean()


def symmetric_nce(x: torch.Tensor, y: torch.Tensor, tau: float, env: DistEnv | None, detach_keys: bool) -> torch.Tensor:
    """GDT's ``gdt_loss``: (NCE(y, x) + NCE(x, y)) / 2."""
    return (nce_mean(y, x, tau, env, detach_keys) + nce_mean(x, y, tau, env, detach_keys)) / 2


# ------------------------------------------------------------------------------------- SvaCLR
@dataclass
class SvaCLRConfig:
    temperature: float = 0.07      # eta; not in the paper (GDT's value)
    symmetric: bool = False        # eq. 1 is audio-anchored; true adds the video-anchored direction
    detach_keys: bool = False
    mode: str = "pairwise_scalar"  # R1 (default) | soft_targets (R2) | none (lambda = 1: plain InfoNCE)
    affinity_on: str = "y"         # y = encoder outputs (the paper's identity l), or z
    detach_lambda: bool = True
    pairs: list[str] = field(default_factory=lambda: list(SVACLR_PAIRS))

    def __post_init__(self) -> None:
        if self.mode not in SVACLR_MODES:
            raise ValueError(f"objective.svaclr.mode must be one of {SVACLR_MODES}, got {self.mode!r}")
        if self.affinity_on not in ("y", "z"):
            raise ValueError(f"objective.svaclr.affinity_on must be y or z, got {self.affinity_on!r}")
        bad = [p for p in self.pairs if p not in SVACLR_PAIRS]
        if bad or not self.pairs:
            raise ValueError(f"objective.svaclr.pairs must be a non-empty subset of {SVACLR_PAIRS}, got {self.pairs}")
        if self.temperature <= 0:
            raise ValueError("objective.svaclr.temperature must be > 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SvaCLRConfig:
        return from_known_keys(cls, values, "objective.svaclr")


class SvaCLRObjective(Stateless):
    """SoftInfoNCE over the four audio/video view pairs; view 1 is the un-augmented (speed 1) view."""

    batch_keys = ()

    def __init__(self, cfg: SvaCLRConfig) -> None:
        self.cfg = cfg
        self.views = tuple(sorted({f"{p[:2]}" for p in cfg.pairs} | {p[2:] for p in cfg.pairs},
                                  key=lambda v: ("va".index(v[0]), v)))

    def _affinity(self, outputs, audio: str, video: str) -> tuple[torch.Tensor, torch.Tensor]:
        key = self.cfg.affinity_on
        ya, yv = F.normalize(outputs[audio][key].float(), dim=1), F.normalize(outputs[video][key].float(), dim=1)
        return (ya.detach(), yv.detach()) if self.cfg.detach_lambda else (ya, yv)

    def _weights(self, outputs) -> dict[str, torch.Tensor]:
        """lambda_i^{pq} of reading R1 (ratio to the un-augmented pair)."""
        ya1, yv1 = self._affinity(outputs, "a1", "v1")
        s11 = (ya1 * yv1).sum(1)
        weights = {}
        for pair in self.cfg.pairs:
            ya, yv = self._affinity(outputs, pair[:2], pair[2:])
            weights[pair] = ((ya * yv).sum(1) - s11).exp()
        return weights

    def _soft_targets(self, outputs, pair: str, env: DistEnv) -> torch.Tensor | None:
        if pair == "a1v1":
            return None
        ya, yv = self._affinity(outputs, pair[:2], pair[2:])
        keys, _ = gather_keys(yv, env, detach=True)
        return (ya @ keys.T).softmax(dim=1)

    def __call__(self, outputs, batch, ctx: StepContext):
        cfg, env = self.cfg, ctx.env
        weights = self._weights(outputs) if cfg.mode == "pairwise_scalar" else {}
        pair_losses, logs = [], {}
        for pair in cfg.pairs:
            za, zv = outputs[pair[:2]]["z"], outputs[pair[2:]]["z"]
            targets = self._soft_targets(outputs, pair, env) if cfg.mode == "soft_targets" else None
            per_sample = info_nce(za, zv, cfg.temperature, env, detach_keys=cfg.detach_keys, targets=targets)
            if cfg.symmetric:
                t_v = None if targets is None else self._soft_targets_video(outputs, pair, env)
                per_sample = (per_sample + info_nce(zv, za, cfg.temperature, env, detach_keys=cfg.detach_keys,
                                                    targets=t_v)) / 2
            weighted = per_sample * weights[pair] if pair in weights else per_sample
            pair_losses.append(weighted.mean())
            logs[f"loss/L_{pair}"] = per_sample.detach().mean()
            if pair in weights:
                logs[f"lambda/{pair}"] = weights[pair].detach().mean()
        return torch.stack(pair_losses).mean(), logs

    def _soft_targets_video(self, outputs, pair: str, env: DistEnv) -> torch.Tensor | None:
        if pair == "a1v1":
            return None
        ya, yv = self._affinity(outputs, pair[:2], pair[2:])
        keys, _ = gather_keys(ya, env, detach=True)
        return (yv @ keys.T).softmax(dim=1)


# -------------------------------------------------------------------------------------- STiCA
@dataclass
class STiCAConfig:
    tau_cross: float = 0.1         # [D4] section 6.1: cross-modal temperature
    tau_within: float = 0.5        # [D4] section 6.1: within-modal (feature crop) temperature
    alpha: float = 0.5             # [G] cross_modal_alpha
    detach_keys: bool = True       # GDT convention (keys are constants)
    ll_pairs: str = "code"         # code = only large crop #2 of each clip ([G]); all = every large crop

    def __post_init__(self) -> None:
        if self.tau_cross <= 0 or self.tau_within <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError("objective.stica: temperatures must be > 0 and alpha in [0, 1]")
        if self.ll_pairs not in ("code", "all"):
            raise ValueError(f"objective.stica.ll_pairs must be code or all, got {self.ll_pairs!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> STiCAConfig:
        return from_known_keys(cls, values, "objective.stica")


class STiCAObjective(Stateless):
    """Two clips (v1, v2: the same frames, augmented independently), one audio view a1."""

    views = ("v1", "v2", "a1")
    batch_keys = ()

    def __init__(self, cfg: STiCAConfig) -> None:
        self.cfg = cfg

    def crop_terms(self, crops1: dict[str, list[torch.Tensor]], crops2: dict[str, list[torch.Tensor]],
                   env: DistEnv) -> list[torch.Tensor]:
        """The within-modal terms (T2), spatial then temporal."""
        cfg, terms = self.cfg, []
        for axis in ("s", "t"):
            large1, large2 = crops1.get(f"{axis}_large", []), crops2.get(f"{axis}_large", [])
            small2 = crops2.get(f"{axis}_small", [])
            if not large1:
                continue
            ll = [len(large1) - 1] if cfg.ll_pairs == "code" else range(len(large1))
            terms += [symmetric_nce(large2[i], large1[i], cfg.tau_within, env, cfg.detach_keys) for i in ll]
            terms += [nce_mean(s, large, cfg.tau_within, env, cfg.detach_keys) for large in large1 for s in small2]
        return terms

    def __call__(self, outputs, batch, ctx: StepContext):
        cfg, env = self.cfg, ctx.env
        z_a = outputs["a1"]["z"]
        l_av = sum(symmetric_nce(outputs[v]["z"], z_a, cfg.tau_cross, env, cfg.detach_keys) for v in ("v1", "v2")) / 2
        crops1, crops2 = outputs["v1"].get("crops") or {}, outputs["v2"].get("crops") or {}
        terms = self.crop_terms(crops1, crops2, env)
        logs = {"loss/L_av": l_av.detach()}
        if not terms:
            return l_av, logs
        l_crop = torch.stack(terms).mean()
        logs["loss/L_crop"] = l_crop.detach()
        return cfg.alpha * l_av + (1 - cfg.alpha) * l_crop, logs
