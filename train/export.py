"""Export of the pretrained backbones for the evaluators (interfaces.md item 6).

An export directory holds ``video.safetensors`` and ``audio.safetensors`` (the encoders' state
dicts, BatchNorm running statistics included) and ``backbones.json`` (the model config and the
format version). ``load_backbones`` accepts such a directory or a trainer checkpoint file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from crisscross.shards.atomic import atomic_write
from crisscross.train.checkpoint import load_checkpoint
from crisscross.train.models import ModelConfig, build_audio_encoder, build_video_encoder

EXPORT_FORMAT = 1


def _save_safetensors(module: nn.Module, path: Path) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, save(tensors, metadata={"format": str(EXPORT_FORMAT)}))


def save_backbones(out_dir: str | Path, video_encoder: nn.Module, audio_encoder: nn.Module,
                   model_cfg: ModelConfig | dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """``extra``: further backbones.json fields (weights import: ``source`` and the release's
    ``frontend``, docs/weights.md); they may not replace the fields written here."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(video_encoder, out / "video.safetensors")
    _save_safetensors(audio_encoder, out / "audio.safetensors")
    meta = {"format": EXPORT_FORMAT, "model": ModelConfig.from_dict(model_cfg).to_dict(),
            "video_out_dim": int(video_encoder.out_dim), "audio_out_dim": int(audio_encoder.out_dim)}
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ValueError(f"save_backbones: extra fields {clash} would replace the export's own fields")
    meta.update(extra or {})
    atomic_write(out / "backbones.json", json.dumps(meta, indent=2))  # written last: its presence marks a complete export
    return out


def load_backbones(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module, ModelConfig]:
    """(video_encoder, audio_encoder, model_cfg) from an export directory or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        meta_path = path / "backbones.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path} is not a complete export (no backbones.json)")
        cfg = ModelConfig.from_dict(json.loads(meta_path.read_text())["model"])
        video_state = load_file(str(path / "video.safetensors"))
        audio_state = load_file(str(path / "audio.safetensors"))
    elif path.is_file():
        checkpoint = load_checkpoint(path)
        cfg = ModelConfig.from_dict(checkpoint["config"]["model"])
        model_state = checkpoint["model"]
        video_state = _strip_prefix(model_state, "video.encoder.")
        audio_state = _strip_prefix(model_state, "audio.encoder.")
    else:
        raise FileNotFoundError(f"no export directory or checkpoint at {path}")
    video, audio = build_video_encoder(cfg), build_audio_encoder(cfg)
    video.load_state_dict(video_state)
    audio.load_state_dict(audio_state)
    return video.to(device).eval(), audio.to(device).eval(), cfg


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
