"""Export of the pretrained backbones for the evaluators (interfaces.md item 6).

An export directory holds ``video.safetensors`` and ``audio.safetensors`` (the encoders' state
dicts, BatchNorm running statistics included) and ``backbones.json`` (the model config, the
format version and, from format 2, ``input``: the input the encoders were trained on, i.e. the
video geometry and the audio front end, which the evaluators reproduce). ``load_backbones``
accepts such a directory or a trainer checkpoint file; ``load_encoder_input`` reads ``input``
from either (None for a format-1 export, which predates the field).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from crisscross.shards.atomic import atomic_write
from crisscross.train.checkpoint import load_checkpoint
from crisscross.train.models import ModelConfig, build_audio_encoder, build_video_encoder

EXPORT_FORMAT = 2  # 2: backbones.json has "input"; format 1 (no "input") is still read

def default_encoder_input() -> dict[str, dict[str, Any]]:
    """The default view at the builder's default rates (what a run that sets none of the view keys trains on)."""
    from crisscross.shards import format as fmt
    from crisscross.shards.loader import ViewSpec

    return ViewSpec().to_input(float(fmt.DEFAULT_FPS), fmt.DEFAULT_SAMPLE_RATE)


def encoder_input(train_config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"video": {...}, "audio": {...}}``: the view of a training config (``ViewSpec.to_input`` of
    its ``data`` section at its shards' rates, or its ``synthetic`` section for ``run.loader:
    synthetic``), the defaults filling the rest."""
    from crisscross.shards.loader import LoaderConfig

    config = dict(train_config or {})
    if (config.get("run") or {}).get("loader") == "synthetic":
        spec = default_encoder_input()
        synthetic = config.get("synthetic") or {}
        audio = spec["audio"]
        values = {"frames": synthetic.get("frames"), "crop": synthetic.get("crop"), "n_mels": synthetic.get("mel_bins")}
        if synthetic.get("audio_frames") is not None:
            values["audio_seconds"] = float(synthetic["audio_frames"]) * audio["hop"] / audio["sample_rate"]
        for part in spec.values():
            part.update({k: values[k] for k in part if values.get(k) is not None})
        return spec
    data = LoaderConfig.from_dict(config.get("data") or {})
    fps, sample_rate = default_encoder_input()["video"]["fps"], default_encoder_input()["audio"]["sample_rate"]
    rates = _shard_rates(data.shards) if data.shards else {}
    return data.view().to_input(data.fps or rates.get("fps", fps), data.sample_rate or rates.get("sample_rate", sample_rate))


def _shard_rates(shards: str) -> dict[str, Any]:
    """The rates the run trained at: the shards' own (shards.Dataset)."""
    from crisscross.shards.dataset import Dataset

    try:
        dataset = Dataset.open(shards)
    except (OSError, ValueError, RuntimeError):  # shards gone since training: the defaults stand
        return {}
    return {"fps": dataset.fps, "sample_rate": dataset.sample_rate}


def _save_safetensors(module: nn.Module, path: Path) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, save(tensors, metadata={"format": str(EXPORT_FORMAT)}))


def save_backbones(out_dir: str | Path, video_encoder: nn.Module, audio_encoder: nn.Module,
                   model_cfg: ModelConfig | dict[str, Any], extra: dict[str, Any] | None = None, *,
                   train_config: Mapping[str, Any] | None = None,
                   input_spec: dict[str, dict[str, Any]] | None = None) -> Path:
    """``extra``: further backbones.json fields (weights import: ``source`` and the release's
    ``frontend``, docs/weights.md); they may not replace the fields written here.
    ``input`` is ``input_spec`` if given (imported weights: the release's front end), else the
    input of ``train_config`` (the run's resolved config), else the data defaults."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_safetensors(video_encoder, out / "video.safetensors")
    _save_safetensors(audio_encoder, out / "audio.safetensors")
    meta = {"format": EXPORT_FORMAT, "model": ModelConfig.from_dict(model_cfg).to_dict(),
            "video_out_dim": int(video_encoder.out_dim), "audio_out_dim": int(audio_encoder.out_dim),
            "input": _checked_input(input_spec) if input_spec is not None else encoder_input(train_config)}
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


def _checked_input(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """An ``input`` with exactly the known keys per modality (a typo must not reach the evaluators)."""
    from crisscross.shards.loader import AUDIO_INPUT_KEYS, VIDEO_INPUT_KEYS

    known = {"video": VIDEO_INPUT_KEYS, "audio": AUDIO_INPUT_KEYS}
    if isinstance(spec.get("audio"), Mapping) and "audio_frontend" not in spec["audio"]:
        # exports and release inputs written before data.audio_frontend existed: all log-mel
        spec = {**spec, "audio": {**spec["audio"], "audio_frontend": "logmel"}}
    if isinstance(spec.get("video"), Mapping) and not {"video_mean", "video_std"} & set(spec["video"]):
        # exports written before the RGB normalisation was recorded: all used the Kinetics statistics
        from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD

        spec = {**spec, "video": {**spec["video"], "video_mean": list(KINETICS_MEAN), "video_std": list(KINETICS_STD)}}
    if set(spec) != set(known):
        raise ValueError(f"input spec needs exactly the sections {sorted(known)}, got {sorted(spec)}")
    for section, keys in known.items():
        if set(spec[section]) != set(keys):
            raise ValueError(f"input.{section} needs exactly {sorted(keys)}, got {sorted(spec[section])}")
    return {section: dict(spec[section]) for section in known}


def load_encoder_input(path: str | Path) -> dict[str, dict[str, Any]] | None:
    """The ``input`` of an export directory (None for a format-1 export without it) or of a
    trainer checkpoint file (from the run's config inside it)."""
    path = Path(path)
    if path.is_dir():
        spec = json.loads((path / "backbones.json").read_text()).get("input")
        return _checked_input(spec) if spec is not None else None
    if path.is_file():
        return encoder_input(load_checkpoint(path).get("config"))
    raise FileNotFoundError(f"no export directory or checkpoint at {path}")
