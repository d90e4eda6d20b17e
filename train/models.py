"""Encoders and heads of CrissCross (supplement appendix F, Tables S5-S8).

* Video: R(2+1)D-18 in the AVID / CrissCross variant (Table S5), built from ``torch.nn`` layers:
  stem Conv3d(3->w, 3x7x7, stride 1x2x2) + norm + ReLU + MaxPool3d(1x3x3, stride 1x2x2), then
  four stages (w, 2w, 4w, 8w channels; w = 64 in the paper) whose first block of stages 3-5
  strides 2x2x2. A block factorises each 3x3x3 conv into spatial 1x3x3 and temporal 3x1x1 convs
  *without* the mid-plane widening of Tran et al. (torchvision's ``r2plus1d_18`` widens, which is
  why it is not used here).
* Audio: torchvision's ResNet-18 with a 1-channel stem, on 1x80x200 log-mel (Table S6).
* Heads: projector fc-norm-relu, fc-norm-relu, fc-norm (Table S7) and predictor fc-norm-relu, fc
  (Table S8); a separate projector and predictor per modality.

``ModelConfig`` has a width/depth knob so that tests and the demo run a tiny version of the same
code on a CPU, architecture knobs that express the encoders of other released checkpoints (so
that ``crisscross weights import`` can load them; docs/weights.md):

* ``video_arch="tv_r2plus1d"``: the torchvision / VMZ R(2+1)D-18 that GDT uses: a factorised stem
  (1x7x7 conv to 45 channels, 3x1x1 conv), no stem max-pool, mid-plane widening in every (2+1)D
  conv, norm on each branch before the sum and a normed 1x1x1 projection on the residual;
* ``audio_arch="avid_conv2d"``: AVID-CMA's 10-layer plain (no residual) 2-d conv net;
* ``audio_pool``: ``max`` for AVID-CMA's audio net (``avg`` = Table S6).

and a ``norm`` knob: ``batch`` (the paper; SyncBatchNorm under DDP on GPUs),
``group`` (per-sample statistics, so results do not depend on how a batch is split over ranks,
which makes 1-process vs N-process parity exact on CPUs) or ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from crisscross.config import from_known_keys
from crisscross.train.heads import HEADS, avid_mlp, gdt_mlp
from crisscross.train.pooling import CropConfig, TemporalPool, crop_map, sample_crop_boxes

NORMS = ("batch", "group", "none")
POOLS = ("avg", "max")
# "crisscross": Table S5 (also AVID-CMA's R2Plus1D); "tv_r2plus1d": torchvision/VMZ R(2+1)D (GDT)
VIDEO_ARCHS = ("crisscross", "tv_r2plus1d")
# "resnet": Table S6 (also GDT's ResNet-9 with audio_blocks [1,1,1,1]); "avid_conv2d": AVID-CMA
AUDIO_ARCHS = ("resnet", "avid_conv2d")
VIDEO_TEMPORAL_POOLS = ("encoder", "transformer")
# the paper dimensions of the other methods' heads when model.head_dims is empty
DEFAULT_HEAD_DIMS = {"avid_mlp": [512, 512, 128], "gdt_mlp": [512, 256]}

# The training batch's views (shards/loader.py) and the branch each goes through: routed by
# name, so a view named otherwise is an error instead of landing in the audio branch.
VIEW_MODALITY: dict[str, str] = {"v1": "video", "v2": "video", "a1": "audio", "a2": "audio"}


def view_modality(name: str) -> str:
    """``video`` or ``audio`` for a batch view name (``v1``, ``v2``, ``a1``, ``a2``)."""
    try:
        return VIEW_MODALITY[name]
    except KeyError:
        raise KeyError(f"unknown view {name!r}; the loader's views are {sorted(VIEW_MODALITY)}") from None


@dataclass
class ModelConfig:
    """Architecture hyper-parameters; the defaults are the paper's (Tables S5-S8)."""

    width: int = 64                      # channels of the first stage; stages use w, 2w, 4w, 8w
    video_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    audio_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    norm: str = "batch"                  # batch | group | none
    video_pool: str = "avg"              # avg in pretraining (Table S5); max for finetuning
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3                 # 3 = fc-bn-relu, fc-bn-relu, fc-bn; 2 drops the middle one
    pred_hidden: int = 512
    # Table 3 "comm. pred.": one predictor for both modalities, fed l2-normalized projections
    shared_predictor: bool = False
    # encoders of other releases (weights import); the defaults are the paper's
    video_arch: str = "crisscross"       # crisscross (Table S5) | tv_r2plus1d (GDT)
    audio_arch: str = "resnet"           # resnet (Table S6) | avid_conv2d (AVID-CMA)
    audio_pool: str = "avg"              # avg (Table S6) | max (AVID-CMA's audio net)
    # heads and poolings of the other seed systems (docs/methods.md); the defaults are CrissCross's
    head: str = "simsiam"                # simsiam (Tables S7/S8) | avid_mlp (AVID/CMA) | gdt_mlp (SvaCLR/STiCA)
    head_dims: list[int] = field(default_factory=list)  # avid_mlp/gdt_mlp layer sizes; [] = the paper's
    head_dropout: float = 0.0            # gdt_mlp's dropout (0.3 in STiCA)
    video_temporal_pool: str = "encoder"  # encoder (video_pool over T, H, W) | transformer (STiCA)
    transformer_layers: int = 2          # STiCA's pooling transformer (appendix 6.2)
    transformer_heads: int = 4
    transformer_ffn: int = 2048
    transformer_tokens: int | None = None  # re-pool time to this many tokens first (GDT's time_dim)
    crops: CropConfig | None = None   # STiCA's feature crops on the last video map (null = off)

    def __post_init__(self) -> None:
        if isinstance(self.crops, dict):
            self.crops = CropConfig.from_dict(self.crops)
        if self.head not in HEADS or self.video_temporal_pool not in VIDEO_TEMPORAL_POOLS:
            raise ValueError(f"model.head must be one of {HEADS} and model.video_temporal_pool one of "
                             f"{VIDEO_TEMPORAL_POOLS}, got {self.head!r}, {self.video_temporal_pool!r}")
        self.head_dims = [int(d) for d in self.head_dims]
        if any(d < 1 for d in self.head_dims) or not 0.0 <= self.head_dropout < 1.0:
            raise ValueError("model.head_dims must be positive and model.head_dropout in [0, 1)")
        if self.crops is not None and self.head == "simsiam":
            raise ValueError("model.crops (STiCA's feature crops) need head: gdt_mlp or avid_mlp")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        for name, allowed in (("video_pool", POOLS), ("audio_pool", POOLS), ("video_arch", VIDEO_ARCHS),
                              ("audio_arch", AUDIO_ARCHS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("video_blocks", "audio_blocks"):
            blocks = list(getattr(self, name))
            if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
                raise ValueError(f"model.{name} must be 4 positive block counts, got {blocks}")
            setattr(self, name, [int(b) for b in blocks])
        if self.width < 1 or self.proj_layers not in (2, 3):
            raise ValueError("model.width must be >= 1 and model.proj_layers 2 or 3")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | ModelConfig) -> ModelConfig:
        if isinstance(values, ModelConfig):
            return values
        return from_known_keys(cls, values, "model config")

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """The same architecture at width 8, one block per stage and 64-d heads: CPU tests/demo."""
        base = dict(width=8, video_blocks=[1, 1, 1, 1], audio_blocks=[1, 1, 1, 1],
                    proj_hidden=64, proj_dim=64, pred_hidden=16)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def norm_factory(kind: str, dims: int) -> Callable[[int], nn.Module]:
    """A ``channels -> module`` constructor for the chosen normalization on 1-d/2-d/3-d features."""
    if kind == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    if kind == "group":
        # GroupNorm normalizes each sample on its own: no dependence on the batch split. Groups of
        # at least 8 channels, because tiny models reach 1x1x1 maps where 1-2 channel groups vanish
        return lambda channels: nn.GroupNorm(math.gcd(channels, min(32, max(1, channels // 8))), channels)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


# --------------------------------------------------------------------------------------- video
class R2Plus1DBlock(nn.Module):
    """(2+1)D residual block of AVID/CrissCross: no mid-plane widening, norm after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.spatial1 = nn.Conv3d(in_ch, out_ch, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
        self.norm_s1 = norm(out_ch)
        self.temporal1 = nn.Conv3d(out_ch, out_ch, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False)
        self.norm_t1 = norm(out_ch)
        self.spatial2 = nn.Conv3d(out_ch, out_ch, (1, 3, 3), 1, (0, 1, 1), bias=False)
        self.norm_s2 = norm(out_ch)
        self.temporal2 = nn.Conv3d(out_ch, out_ch, (3, 1, 1), 1, (1, 0, 0), bias=False)
        self.norm_out = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        # projected residual (1x1x1 conv, no norm: the block's output norm follows the sum)
        self.residual = (
            nn.Conv3d(in_ch, out_ch, 1, stride, bias=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm_s1(self.spatial1(x)))
        y = self.relu(self.norm_t1(self.temporal1(y)))
        y = self.relu(self.norm_s2(self.spatial2(y)))
        y = self.temporal2(y)
        return self.relu(self.norm_out(y + self.residual(x)))


class _VideoResNet(nn.Module):
    """Stem, four stages of ``block`` (stride 2 from the second stage on), global pool; the two
    R(2+1)D variants differ only in their stem and block."""

    def __init__(self, cfg: ModelConfig, stem: nn.Module, block: Callable[..., nn.Module],
                 norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.stem = stem
        stages, in_ch = [], cfg.width
        for index, blocks in enumerate(cfg.video_blocks):
            out_ch = cfg.width * 2**index
            layers = [block(in_ch, out_ch, 1 if index == 0 else 2, norm)]
            layers += [block(out_ch, out_ch, 1, norm) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1) if cfg.video_pool == "avg" else nn.AdaptiveMaxPool3d(1)
        self.out_dim = in_ch
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)).flatten(1)


class VideoR2Plus1D(_VideoResNet):
    """R(2+1)D-18 (Table S5). Input [B, 3, T, H, W]; 8x112^2 -> features [B, 8w, 1, 4, 4]."""

    def __init__(self, cfg: ModelConfig) -> None:
        w, norm = cfg.width, norm_factory(cfg.norm, 3)
        stem = nn.Sequential(
            nn.Conv3d(3, w, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            norm(w),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )
        super().__init__(cfg, stem, R2Plus1DBlock, norm)


# torchvision / VMZ R(2+1)D (GDT's video encoder). Written from Tran et al. 2018 and the published
# layer list of torchvision.models.video.r2plus1d_18; module names follow that layout (conv1/conv2
# of a block are [conv(2+1)d, norm(, relu)], the (2+1)d conv is [spatial, norm, relu, temporal])
# so that a torchvision-style state dict maps onto it by renaming stem/layerN/downsample only.
def midplanes(in_ch: int, out_ch: int) -> int:
    """Tran et al.'s mid-plane count: a (2+1)D conv gets the parameters of a full 3x3x3 conv."""
    return (in_ch * out_ch * 27) // (in_ch * 9 + 3 * out_ch)


def _conv2plus1d(in_ch: int, out_ch: int, mid: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_ch, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
        norm(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, out_ch, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
    )


class TVR2Plus1DBlock(nn.Module):
    """torchvision-style (2+1)D block: widened mid planes, norm on each branch before the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        mid = midplanes(in_ch, out_ch)
        self.conv1 = nn.Sequential(_conv2plus1d(in_ch, out_ch, mid, stride, norm), norm(out_ch), nn.ReLU(inplace=True))
        # the second conv keeps the mid-plane count computed from the block's input (as VMZ does)
        self.conv2 = nn.Sequential(_conv2plus1d(out_ch, out_ch, mid, 1, norm), norm(out_ch))
        self.relu = nn.ReLU(inplace=True)
        self.residual = (
            nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))
            if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.residual(x))


class VideoTVR2Plus1D(_VideoResNet):
    """``video_arch="tv_r2plus1d"``. Input [B, 3, T, H, W]; 8x112^2 -> features [B, 8w, 1, 7, 7]."""

    def __init__(self, cfg: ModelConfig) -> None:
        w, norm = cfg.width, norm_factory(cfg.norm, 3)
        stem_mid = max(1, 45 * w // 64)  # torchvision hard-codes 45 for w = 64
        stem = nn.Sequential(
            nn.Conv3d(3, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            norm(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, w, (3, 1, 1), 1, (1, 0, 0), bias=False),
            norm(w),
            nn.ReLU(inplace=True),
        )
        super().__init__(cfg, stem, TVR2Plus1DBlock, norm)


# --------------------------------------------------------------------------------------- audio
class AudioResNet(ResNet):
    """torchvision's ResNet (BasicBlock) with a 1-channel stem, a width knob and no classifier.

    Input [B, 1, 80, 200] log-mel; ResNet-18 gives features [B, 8w, 3, 7] (Table S6).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        # torchvision hard-codes 64/128/256/512 planes; _make_layer below rescales them by width/64
        self._width = cfg.width
        super().__init__(BasicBlock, cfg.audio_blocks, norm_layer=norm_factory(cfg.norm, 2))
        w = cfg.width
        self.conv1 = nn.Conv2d(1, w, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = self._norm_layer(w)
        if isinstance(self.bn1, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(self.bn1.weight)
            nn.init.zeros_(self.bn1.bias)
        self.fc = nn.Identity()
        if cfg.audio_pool == "max":  # torchvision's attribute name kept; only the pooling differs
            self.avgpool = nn.AdaptiveMaxPool2d(1)
        self.out_dim = 8 * w

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # type: ignore[override]
        if planes == 64:  # first stage: its input is the (rescaled) stem, not torchvision's 64
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.forward_features(x)).flatten(1)


class AudioAVIDConv2D(nn.Module):
    """``audio_arch="avid_conv2d"``: AVID-CMA's audio net (its ``Conv2D``, depth 10), written from
    the paper's description and the published layer list: a 7x7/2 conv stem (no max-pool), then
    four *plain* blocks of two 3x3 conv-norm-relu (no residual) with w, w, 2w, 4w, 8w channels and
    strides 2, 2, 2, 1. ``audio_blocks`` does not apply (the net has one block per stage)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w, norm = cfg.width, norm_factory(cfg.norm, 2)
        self.stem = nn.Sequential(nn.Conv2d(1, w, 7, 2, 3, bias=False), norm(w), nn.ReLU(inplace=True))
        plan = [(w, w, 2), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 1)]
        self.stages = nn.Sequential(*[self._plain_block(i, o, s, norm) for i, o, s in plan])
        self.pool = nn.AdaptiveAvgPool2d(1) if cfg.audio_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.out_dim = 8 * w
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _plain_block(in_ch: int, out_ch: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), norm(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), norm(out_ch), nn.ReLU(inplace=True),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)).flatten(1)


def build_video_encoder(cfg: ModelConfig | dict[str, Any]) -> nn.Module:
    """The video backbone; with ``video_temporal_pool: transformer`` its ``pool`` is STiCA's
    transformer over the spatially averaged last map, so exports and evaluators get it too."""
    cfg = ModelConfig.from_dict(cfg)
    encoder = VideoTVR2Plus1D(cfg) if cfg.video_arch == "tv_r2plus1d" else VideoR2Plus1D(cfg)
    if cfg.video_temporal_pool == "transformer":
        encoder.pool = TemporalPool("transformer", encoder.out_dim, dict(
            layers=cfg.transformer_layers, heads=cfg.transformer_heads, ffn=cfg.transformer_ffn,
            tokens=cfg.transformer_tokens))
    return encoder


def build_audio_encoder(cfg: ModelConfig | dict[str, Any]) -> nn.Module:
    cfg = ModelConfig.from_dict(cfg)
    return AudioAVIDConv2D(cfg) if cfg.audio_arch == "avid_conv2d" else AudioResNet(cfg)


# --------------------------------------------------------------------------------------- heads
def _fc_norm(in_dim: int, out_dim: int, norm: Callable[[int], nn.Module], relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim), norm(out_dim)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Projector(nn.Sequential):
    """Table S7: fc-bn-relu, fc-bn-relu, fc-bn (``proj_layers=2`` drops the middle layer)."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        norm = norm_factory(cfg.norm, 1)
        layers = [_fc_norm(in_dim, cfg.proj_hidden, norm, relu=True)]
        if cfg.proj_layers == 3:
            layers.append(_fc_norm(cfg.proj_hidden, cfg.proj_hidden, norm, relu=True))
        layers.append(_fc_norm(cfg.proj_hidden, cfg.proj_dim, norm, relu=False))
        super().__init__(*layers)


class Predictor(nn.Sequential):
    """Table S8: fc-bn-relu (bottleneck), fc."""

    def __init__(self, cfg: ModelConfig) -> None:
        norm = norm_factory(cfg.norm, 1)
        super().__init__(_fc_norm(cfg.proj_dim, cfg.pred_hidden, norm, relu=True),
                         nn.Linear(cfg.pred_hidden, cfg.proj_dim))


class Branch(nn.Module):
    """One modality: encoder (backbone) + projector give z; the predictor maps z to p."""

    def __init__(self, encoder: nn.Module, cfg: ModelConfig, predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = Projector(encoder.out_dim, cfg)
        self.predictor = predictor if predictor is not None else Predictor(cfg)
        # a predictor shared by both modalities sees l2-normalized projections (paper, section 4.4),
        # so that neither modality's scale dominates the common mapping
        self.normalize_predictor_input = cfg.shared_predictor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(x))
        return z, self.predictor(F.normalize(z, dim=1) if self.normalize_predictor_input else z)


class CrissCrossModel(nn.Module):
    """Both branches. ``forward(views)`` maps {"v1","v2","a1","a2"} inputs to their (z, p).

    Only the views given are computed, so uni-modal ablations (L_v1v2, L_a1a2) skip the other
    modality entirely; the trainer freezes that branch so DDP does not wait for its gradients.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = Branch(build_video_encoder(cfg), cfg)
        self.audio = Branch(build_audio_encoder(cfg), cfg, self.video.predictor if cfg.shared_predictor else None)

    def forward(self, views: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        # each view goes through its branch separately, as in SimSiam and the official code, so
        # that batch statistics are per view
        return {name: (self.video if view_modality(name) == "video" else self.audio)(x) for name, x in views.items()}


# ------------------------------------------------------------------ the other seed systems' model
class ContrastiveBranch(nn.Module):
    """Encoder + head of one modality for AVID/CMA, SvaCLR and STiCA (no predictor). The same
    attribute names as ``Branch`` (``encoder``, ``projector``, ``predictor``) so that parameter
    groups, exports and weight imports treat both models alike."""

    def __init__(self, encoder: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = encoder
        dims = cfg.head_dims or DEFAULT_HEAD_DIMS[cfg.head]
        self.projector = (avid_mlp(encoder.out_dim, dims) if cfg.head == "avid_mlp"
                          else gdt_mlp(encoder.out_dim, dims, cfg.head_dropout, norm_factory(cfg.norm, 1)))
        self.predictor = nn.Identity()

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        pool = self.encoder.pool if hasattr(self.encoder, "pool") else self.encoder.avgpool  # AudioResNet's name
        return pool(fmap).flatten(1)

    def forward(self, x: torch.Tensor, crops: dict[str, list[tuple[int, int]]] | None = None) -> dict[str, Any]:
        fmap = self.encoder.forward_features(x)
        y = self.pooled(fmap)
        out: dict[str, Any] = {"y": y, "z": self.projector(y)}
        if crops:
            out["crops"] = {kind: [self.projector(self.pooled(crop_map(fmap, kind, start, size)))
                                   for start, size in boxes] for kind, boxes in crops.items()}
        return out


class ContrastiveModel(nn.Module):
    """Both branches of AVID/CMA, SvaCLR and STiCA. ``forward(views, crop_seed)`` maps
    {"v1", "v2", "a1", "a2"} inputs to {view: {"y": encoder output, "z": projection, "crops": ...}}.

    Everything with parameters (transformer pooling, heads of the crops) runs here, inside
    ``forward``, so DDP synchronises its gradients. Feature-crop boxes are drawn per video view
    from a generator seeded with ``crop_seed`` (the trainer passes one per rank and step)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = ContrastiveBranch(build_video_encoder(cfg), cfg)
        self.audio = ContrastiveBranch(build_audio_encoder(cfg), cfg)

    def forward(self, views: dict[str, torch.Tensor], crop_seed: int | None = None) -> dict[str, dict[str, Any]]:
        out = {}
        for position, (name, x) in enumerate(sorted(views.items())):
            if view_modality(name) != "video":
                out[name] = self.audio(x)
                continue
            boxes = None
            if self.cfg.crops is not None and self.training:
                t, h, w = self._map_size(x)
                generator = torch.Generator().manual_seed(int(crop_seed or 0) * 7 + position)
                boxes = sample_crop_boxes(self.cfg.crops, t, h, w, generator)
            out[name] = self.video(x, boxes)
        return out

    def _map_size(self, x: torch.Tensor) -> tuple[int, int, int]:
        """T, H, W of the video encoder's last map for input ``x`` (cached per input shape)."""
        key = tuple(x.shape[1:])
        cache = self.__dict__.setdefault("_map_sizes", {})
        if key not in cache:
            with torch.no_grad():
                probe = x[:1].detach()
                was_training = self.video.encoder.training
                self.video.encoder.eval()  # no batch-norm statistics update from the probe
                cache[key] = tuple(self.video.encoder.forward_features(probe).shape[2:])
                self.video.encoder.train(was_training)
        return cache[key]


def build_model(cfg: ModelConfig | dict[str, Any]) -> nn.Module:
    """CrissCross's model for ``head: simsiam``, the contrastive model otherwise."""
    cfg = ModelConfig.from_dict(cfg)
    return CrissCrossModel(cfg) if cfg.head == "simsiam" else ContrastiveModel(cfg)
