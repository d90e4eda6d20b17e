"""Frozen-encoder features: load the encoders, run the DALI evaluation loader, pool, collect.

Pooling of the last conv block (CrissCross supplement, appendix E.1):

* linear evaluation: video max-pool kernel (1,4,4) (stride = kernel); audio max-pool kernel (1,3)
  stride (1,2), over the audio map's (frequency, time) axes;
* fusion: video max-pool (1,2,2), audio max-pool (1,4) (stride = kernel);
* ``global``: mean over all non-channel axes, i.e. the encoder's own average pooling ("pool5",
  what retrieval uses; SpeedAug A.5).

Every max-pool runs with ``ceil_mode=True``: the paper's kernel and stride, plus a last, partial
window wherever the map does not end on a window boundary. Without it a (1,4,4) window over the
7x7 map of a 224 px input keeps only the top-left 4x4 (rows and columns 4-6 never reach the
feature), fusion's (1,4) over a 2 s audio map (3x7) drops time columns 4-6, and (1,3)/(1,2) over
a 5 s audio map (3x16) drops the last column. The feature sizes per input are in
docs/evaluate.md ("Feature sizes"); tests/test_eval_pooling.py checks them and that a peak at any
map position reaches the feature.

A kernel larger than the map (tiny CPU models, short inputs) is clamped to the map's size on that
axis, so a tiny model still pools the way the paper does where the map allows it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Pool = Callable[[torch.Tensor], torch.Tensor]


def _clamped(kernel: tuple[int, ...], stride: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[tuple, tuple]:
    k = tuple(min(kk, s) for kk, s in zip(kernel, sizes))
    return k, tuple(min(ss, kk) for ss, kk in zip(stride, k))


def max_pool(kernel: tuple[int, ...], stride: tuple[int, ...] | None = None) -> Pool:
    """Max-pool a [B, C, *spatial] map with ``kernel``/``stride`` (clamped to the map), then flatten.

    ``ceil_mode`` adds a partial last window where the windows stop short of the map's end, so
    every map position reaches the feature (a window never starts past the map, so none is empty).
    """
    stride = stride or kernel

    def pool(fmap: torch.Tensor) -> torch.Tensor:
        spatial = tuple(fmap.shape[2:])
        if len(spatial) != len(kernel):
            raise ValueError(f"pool kernel {kernel} does not fit a map of shape {tuple(fmap.shape)}")
        k, s = _clamped(kernel, stride, spatial)
        pooled = (F.max_pool3d if len(k) == 3 else F.max_pool2d)(fmap, kernel_size=k, stride=s, ceil_mode=True)
        return pooled.flatten(1)

    return pool


def global_pool(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.flatten(2).mean(dim=2)


POOLINGS: dict[str, dict[str, Pool]] = {
    "linear": {"video": max_pool((1, 4, 4)), "audio": max_pool((1, 3), (1, 2))},
    "fusion": {"video": max_pool((1, 2, 2)), "audio": max_pool((1, 4))},
    "global": {"video": global_pool, "audio": global_pool},
}


def learned_pooling(encoder: nn.Module) -> Pool | None:
    """The encoder's own pooling when it has parameters (STiCA's transformer over time,
    ``model.video_temporal_pool: transformer``), else None.

    Such a pooling was trained with the encoder, and the method's evaluation uses its output
    (GDT/STiCA ``eval_video.py`` takes the transformer's token 0), so every head on that encoder
    (linear, fusion, global, finetuning) uses it instead of pooling the map itself: the feature is
    the pooling's output ([B, out_dim]). A parameter-free pool (avg/max) returns None, so the
    poolings above apply unchanged.
    """
    pool = getattr(encoder, "pool", None)
    if not isinstance(pool, nn.Module) or next(pool.parameters(), None) is None:
        return None
    return lambda fmap: pool(fmap).flatten(1)


# ------------------------------------------------------------------------------------ encoders
@dataclass
class Encoders:
    video: nn.Module
    audio: nn.Module
    model_cfg: dict[str, Any]
    checkpoint_sha: str  # sha256 of the weights' files ("random-..." for an untrained encoder)
    source: str  # what --checkpoint said
    # the input the encoders were trained on (train/export.py "input"); None: not recorded
    # (random init, or an export written before backbones.json format 2)
    input_spec: dict[str, dict[str, Any]] | None = None


def file_sha256(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_config(spec: Any) -> Any:
    """``"tiny"`` / ``{"preset": "tiny", ...overrides}`` / a ModelConfig dict -> ModelConfig."""
    from crisscross.train.models import ModelConfig

    if spec in (None, "paper"):
        return ModelConfig()
    if spec == "tiny":
        return ModelConfig.tiny()
    spec = dict(spec)
    preset = spec.pop("preset", "paper")
    return ModelConfig.tiny(**spec) if preset == "tiny" else ModelConfig.from_dict(spec)


EXPORT_FILES = ("video.safetensors", "audio.safetensors", "backbones.json")


def load_encoders(checkpoint: str, *, model: Any = None, seed: int = 0, device: str = "cpu") -> Encoders:
    """``checkpoint`` is an export dir, a trainer checkpoint file, or ``random`` (then ``model``
    gives the architecture and ``seed`` the initialisation). ``device``: auto, cpu, cuda, cuda:N."""
    from crisscross.train.distributed import resolve_device
    from crisscross.train.models import build_audio_encoder, build_video_encoder

    device = str(resolve_device(device))

    if checkpoint == "random":
        cfg = model_config(model)
        torch.manual_seed(seed)
        video, audio = build_video_encoder(cfg), build_audio_encoder(cfg)
        cfg_dict = cfg.to_dict()
        tag = hashlib.sha256(json.dumps(cfg_dict, sort_keys=True).encode()).hexdigest()[:16]
        sha = f"random-seed{seed}-{tag}"
        input_spec = None
    else:
        from crisscross.train.export import load_backbones, load_encoder_input

        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        video, audio, cfg_any = load_backbones(path, device=device)
        input_spec = load_encoder_input(path)
        cfg_dict = cfg_any.to_dict() if hasattr(cfg_any, "to_dict") else dict(cfg_any)
        files = [path / n for n in EXPORT_FILES] if path.is_dir() else [path]
        sha = file_sha256(files)
    video.to(device).eval()
    audio.to(device).eval()
    return Encoders(video, audio, cfg_dict, sha, checkpoint, input_spec)


# ------------------------------------------------------------------------------------ manifest
@dataclass
class SampleInfo:
    key: str
    label: str
    label_index: int
    split: str
    fold: int
    group: str  # samples sharing a group (a source recording) stay on one side of CV splits
    modalities: str = "av"  # manifest "modalities": "av", "v" or "a"


def read_manifest(shards_dir: Path) -> dict[str, SampleInfo]:
    """Labels, splits, folds and CV groups by sample key, from the dataset (shards.Dataset: the
    builder's ``group`` column; a dataset built before it: each source file its own group, with a
    warning)."""
    from crisscross.shards.dataset import Dataset

    dataset = Dataset.open(shards_dir, need_manifest=True)
    if not dataset.rows:
        raise ValueError(f"{dataset.root / 'manifest.parquet'} lists no samples")
    groups = dataset.groups()
    return {
        str(r["key"]): SampleInfo(
            key=str(r["key"]), label=str(r["label"]), label_index=int(r["label_index"]), split=str(r["split"]),
            fold=int(r["fold"]), group=groups[str(r["key"])], modalities=str(r.get("modalities") or "av"),
        )
        for r in dataset.rows
    }


# ------------------------------------------------------------------------------------ extraction
@dataclass
class ClipFeatures:
    keys: list[str]
    features: dict[str, np.ndarray]  # name -> [N, K, D] float32
    seconds: float  # wall time spent in loading + forward passes
    thumbnails: dict[str, np.ndarray] | None = None  # modality -> [N, h, w(, 3)] uint8, for plots
    # samples the loader skipped (shards/screen.py: key, shard, reason): they have no features
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def rows(self, keys: list[str]) -> np.ndarray:
        position = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in position]
        if missing:
            raise KeyError(f"{len(missing)} samples have no features (e.g. {missing[:3]}): did the loader skip them?")
        return np.array([position[k] for k in keys], dtype=np.int64)


THUMB_SIZE = 64


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to 0..255 (the loader's normalisation is not needed to look at it)."""
    flat = images.flatten(1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8).reshape(images.shape)


def thumbnail(modality: str, clips: torch.Tensor) -> np.ndarray:
    """The middle clip's middle frame ([B, h, w, 3]) or its spectrogram ([B, mel, time]) as uint8."""
    middle = clips[:, clips.shape[1] // 2].float()
    if modality == "video":  # [B, 3, T, H, W]
        image = F.interpolate(middle[:, :, middle.shape[2] // 2], size=(THUMB_SIZE, THUMB_SIZE), mode="area")
        return _to_uint8(image).permute(0, 2, 3, 1).cpu().numpy()
    spec = middle[:, 0]  # [B, mel, time]; low frequencies at the bottom when shown
    image = F.interpolate(spec[:, None], size=(THUMB_SIZE, 2 * THUMB_SIZE), mode="area")[:, 0].flip(1)
    return _to_uint8(image).cpu().numpy()


def _encode(encoder: nn.Module, clips: torch.Tensor, pools: dict[str, Pool], chunk: int) -> dict[str, torch.Tensor]:
    """[B, K, ...] clips -> {name: [B, K, D]}; one forward pass shared by all poolings (an
    encoder with a learned pooling gives that pooling's output to every name)."""
    b, k = clips.shape[:2]
    flat = clips.reshape(b * k, *clips.shape[2:])
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in pools}
    learned = learned_pooling(encoder)  # e.g. STiCA's transformer replaces every map pooling
    for start in range(0, len(flat), chunk):
        fmap = encoder.forward_features(flat[start:start + chunk])
        own = learned(fmap) if learned is not None else None
        for name, pool in pools.items():
            outs[name].append(own if own is not None else pool(fmap))
    return {name: torch.cat(parts).reshape(b, k, -1) for name, parts in outs.items()}


EXPECTED_LAYOUT = {"video": "[B, K, 3, T, crop, crop]", "audio": "[B, K, 1, mel, frames]"}


def _check_layout(modality: str, clips: torch.Tensor) -> None:
    """Fail with the interface's layout, not with a conv error deep inside the encoder."""
    channels = 3 if modality == "video" else 1
    rank = 6 if modality == "video" else 5
    if clips.ndim != rank or clips.shape[2] != channels:
        raise ValueError(f"eval loader gave {modality} of shape {tuple(clips.shape)}; expected {EXPECTED_LAYOUT[modality]}")


@torch.inference_mode()
def extract_features(
    encoders: Encoders,
    batches: Iterable[dict[str, Any]],
    heads: dict[str, tuple[str, Pool]],
    *,
    chunk: int = 64,
    thumbnails: bool = False,
) -> ClipFeatures:
    """Run every batch of an evaluation loader through the frozen encoders.

    ``heads`` maps an output name to (modality, pooling), e.g. {"audio": ("audio", POOLINGS["linear"]["audio"])};
    each modality's encoder runs once per batch whatever the number of heads on it.
    """
    by_modality: dict[str, dict[str, Pool]] = {}
    for name, (modality, pool) in heads.items():
        by_modality.setdefault(modality, {})[name] = pool
    start = time.perf_counter()
    keys: list[str] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in heads}
    thumbs: dict[str, list[np.ndarray]] = {m: [] for m in by_modality}
    for batch in batches:
        keys.extend(batch["key"])
        for modality, pools in by_modality.items():
            if modality not in batch:
                raise KeyError(f"the evaluation loader gave no {modality!r} (batch has {sorted(batch)})")
            encoder = encoders.video if modality == "video" else encoders.audio
            clips = batch[modality].float()
            _check_layout(modality, clips)
            for name, feats in _encode(encoder, clips, pools, chunk).items():
                parts[name].append(feats.cpu().numpy().astype(np.float32))
            if thumbnails:
                thumbs[modality].append(thumbnail(modality, clips))
    if not keys:
        raise ValueError("the evaluation loader yielded no samples")
    if len(set(keys)) != len(keys):
        raise ValueError("the evaluation loader yielded a sample twice")
    return ClipFeatures(
        keys,
        {n: np.concatenate(p) for n, p in parts.items()},
        time.perf_counter() - start,
        {m: np.concatenate(t) for m, t in thumbs.items()} if thumbnails else None,
        list(getattr(batches, "skipped", [])),
    )
