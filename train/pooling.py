"""Video pooling heads of STiCA: transformer temporal pooling and feature crops.

``TransformerPooling`` (STiCA appendix 6.1/6.2 and the official GDT code): the spatially averaged
res5 map gives T tokens of ``dim`` channels; ``layers`` post-LN blocks of

    x <- LN(x + MHA(x)),  x <- LN(x + W2 GELU(W1 x + b1) + b2)          (LayerNorm eps 1e-12)

where MHA projects only queries and keys (V and the output projection are the identity unless
``qkv``), no positional embedding, and the output is the final state of token 0. Without a
positional embedding the output is invariant to permutations of tokens 1..T-1.

Feature crops (STiCA's "space-time crops" on the last feature map): boxes drawn per batch (one
location shared by every sample, as in the official code), independently per clip, from a
generator the caller seeds (so a resumed run draws the same boxes). Each crop goes through the
same pooling and projection as the whole map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crisscross.config import from_known_keys


class QKAttention(nn.Module):
    """Multi-head attention with learned Q/K projections; V and the output are identities unless ``qkv``."""

    def __init__(self, dim: int, heads: int, qkv: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer dim {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim) if qkv else nn.Identity()
        self.out = nn.Linear(dim, dim) if qkv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, qkv: bool, dropout: float) -> None:
        super().__init__()
        self.attention = QKAttention(dim, heads, qkv)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class TransformerPooling(nn.Module):
    """[B, T, dim] tokens -> [B, dim] (token 0's final state). ``tokens``: adaptive average pooling
    of the time axis to that many tokens first (the official code's ``transformer_time_dim``)."""

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, ffn: int = 2048, qkv: bool = False,
                 dropout: float = 0.0, tokens: int | None = None) -> None:
        super().__init__()
        self.tokens = tokens
        self.layers = nn.ModuleList([TransformerLayer(dim, heads, ffn, qkv, dropout) for _ in range(layers)])
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens is not None and x.shape[1] != self.tokens:
            x = F.adaptive_avg_pool1d(x.transpose(1, 2), self.tokens).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x[:, 0]


class TemporalPool(nn.Module):
    """Pooling of a res5 map [B, C, T, H, W] to [B, C]: spatial mean, then the transformer over
    time (``transformer``) or the encoder's own global pool (``avg``/``max``)."""

    def __init__(self, kind: str, dim: int, transformer: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.kind = kind
        if kind == "transformer":
            self.transformer = TransformerPooling(dim, **(transformer or {}))
        elif kind not in ("avg", "max"):
            raise ValueError(f"unknown video pooling {kind!r}; expected avg, max or transformer")

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.kind == "transformer":
            return self.transformer(fmap.mean(dim=(3, 4)).transpose(1, 2))
        return fmap.flatten(2).amax(dim=2) if self.kind == "max" else fmap.flatten(2).mean(dim=2)


# ---------------------------------------------------------------------------------- feature crops
@dataclass
class CropConfig:
    """STiCA's SOTA crops on a 7x7 map: space 2 x 6^2 + 4 x 4^2, time 2 x large + 1 x small.

    Temporal sizes 0 mean 3T/4 (large) and T/2 (small) of the map's T: 3/2 when T = 4 and
    6/4 when T = 8 (the official code's values; the appendix states 3/2 for the 60-frame model)."""

    spatial_large: list[int] = field(default_factory=lambda: [2, 6])    # [count, size]
    spatial_small: list[int] = field(default_factory=lambda: [4, 4])
    temporal_large: list[int] = field(default_factory=lambda: [2, 0])   # size 0 = 3T/4 of the map
    temporal_small: list[int] = field(default_factory=lambda: [1, 0])   # size 0 = T/2 of the map
    parity_randint: bool = False   # the official code's randint(0, size - w): upper start excluded

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CropConfig | None:
        if values is None or isinstance(values, CropConfig):
            return values
        return from_known_keys(cls, values, "model.crops")

    def __post_init__(self) -> None:
        for name in ("spatial_large", "spatial_small", "temporal_large", "temporal_small"):
            value = [int(v) for v in getattr(self, name)]
            if len(value) != 2 or value[0] < 0 or value[1] < 0:
                raise ValueError(f"model.crops.{name} must be [count, size] (non-negative), got {value}")
            setattr(self, name, value)

    def sizes(self, t: int, h: int, w: int) -> dict[str, tuple[int, int]]:
        """{crop kind: (count, size)} for a map of T x H x W; sizes checked against the map."""
        out = {"s_large": tuple(self.spatial_large), "s_small": tuple(self.spatial_small),
               "t_large": (self.temporal_large[0], self.temporal_large[1] or max(1, 3 * t // 4)),
               "t_small": (self.temporal_small[0], self.temporal_small[1] or max(1, t // 2))}
        for kind, (count, size) in out.items():
            extent = min(h, w) if kind[0] == "s" else t
            if count < 0 or not 1 <= size <= extent:
                raise ValueError(
                    f"feature crop {kind} of size {size} does not fit the {t}x{h}x{w} res5 map: STiCA's crops need "
                    "a 7x7 map (video_arch: tv_r2plus1d at 112 px gives 7x7, the crisscross arch 4x4) and enough "
                    "frames; set model.crops sizes that fit, or model.crops: null")
        return {k: (int(c), int(s)) for k, (c, s) in out.items()}


def sample_crop_boxes(cfg: CropConfig, t: int, h: int, w: int, generator: torch.Generator) -> dict[str, list[tuple[int, int]]]:
    """{kind: [(start, size), ...]}; spatial starts are (y, x) pairs encoded as y * W + x."""
    boxes: dict[str, list[tuple[int, int]]] = {}
    for kind, (count, size) in cfg.sizes(t, h, w).items():
        extent_y, extent_x = (h, w) if kind[0] == "s" else (t, 1)
        high_y, high_x = extent_y - size + 1, (extent_x - size + 1 if kind[0] == "s" else 1)
        if cfg.parity_randint:  # np.random.randint(0, extent - size): the last start is never drawn
            high_y, high_x = max(high_y - 1, 1), max(high_x - 1, 1) if kind[0] == "s" else 1
        out = []
        for _ in range(count):
            y = int(torch.randint(0, high_y, (1,), generator=generator))
            x = int(torch.randint(0, high_x, (1,), generator=generator)) if kind[0] == "s" else 0
            out.append((y * w + x if kind[0] == "s" else y, size))
        boxes[kind] = out
    return boxes


def crop_map(fmap: torch.Tensor, kind: str, start: int, size: int) -> torch.Tensor:
    """The crop of a res5 map [B, C, T, H, W] described by (kind, start, size)."""
    if kind[0] == "s":
        y, x = divmod(start, fmap.shape[-1])
        return fmap[..., y:y + size, x:x + size]
    return fmap[:, :, start:start + size]
