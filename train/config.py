"""Training configuration: YAML presets + dotted command-line overrides, resolved into one dict.

A config is a nested dict with the sections of ``DEFAULTS``. A preset (``train/presets/NAME.yaml``
or any YAML path) may name a ``base`` preset that it updates. Overrides are ``key.sub=value``
strings; values are parsed as YAML (``optim.lr=1e-4``, ``objective.terms=[sync,intra]``,
``run.max_steps=null``). Every key must exist in ``DEFAULTS``, except under ``data``, whose keys
belong to the shard loader (``crisscross.shards.loader.LoaderConfig``), which rejects unknown ones.
The resolved config is written to ``<run.dir>/config.yaml`` and stored in every checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from crisscross.train.models import ModelConfig
from crisscross.train.objective import ObjectiveConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
FREE_SECTIONS = ("data",)  # keys owned by another stage, validated there

DEFAULTS: dict[str, Any] = {
    "run": {
        "dir": "runs/crisscross",
        "seed": 0,
        "epochs": 100,
        "epoch_size": None,       # samples per epoch (Table S10 "es"); null = one pass over the shards
        "max_steps": None,        # stop early after this many optimizer steps (schedule unchanged)
        "loader": "dali",         # dali (crisscross.shards.loader) | synthetic (deterministic tensors)
        "device": "auto",         # auto | cpu | cuda
        "precision": "bf16",      # bf16 | fp16 (with GradScaler) | fp32
        "num_threads": None,      # torch intra-op threads per process; null = torch's default
        "sync_bn": True,          # convert BatchNorm to SyncBatchNorm under DDP on GPUs
        "channels_last": False,   # channels_last_3d memory format for the video branch (GPU)
        "compile": False,         # torch.compile the model
        "prefetch": 1,            # batches decoded ahead on a background thread (0 = inline)
        "log_every": 10,          # steps between console/TensorBoard/JSONL records
        "checkpoint_every": 500,  # steps between checkpoints (plus one at the end and on SIGTERM)
        "keep_checkpoints": 3,    # newest checkpoints kept; older ones are deleted ...
        "keep_every": None,       # ... except steps that are multiples of this (milestones)
        "progress": True,         # tqdm bar on rank 0
        "tensorboard": True,
        "export": True,           # write safetensors backbones to <dir>/export at the end
        "init_from": None,        # export dir (e.g. crisscross weights import) whose backbones start the run; not a resume
    },
    "model": ModelConfig().to_dict(),
    "objective": {"terms": ["intra", "sync", "async"], "reduce": "mean"},
    "optim": {
        "batch_size": 512,        # global batch; per-rank batch = batch_size / world_size
        "lr": 2.0e-4,             # base LR of encoders + projectors (cosine start)
        "end_lr": 0.0,            # cosine end
        "pred_lr": 2.0e-3,        # constant LR of the predictors
        "warmup_epochs": 2.0,     # linear warmup from 0 (official code; the paper does not say)
        "weight_decay": 1.0e-4,
        "betas": [0.9, 0.999],
        "larc": False,
        "larc_trust": 1.0e-3,
        "larc_clip": True,
    },
    "data": {},
    "synthetic": {                # deterministic random tensors: tests and the benchmark ceiling
        "num_samples": 64,
        "frames": 8,
        "crop": 112,
        "mel_bins": 80,
        "audio_frames": 200,
        "delay_s": 0.0,           # simulated I/O latency per batch
    },
}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"no config file or preset named {str(name_or_path)!r}; presets: {preset_names()}")


def _load_yaml_chain(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = _preset_path(name_or_path).resolve()
    if path in seen:
        raise ValueError(f"preset inheritance loops through {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    merged = _load_yaml_chain(base, seen + (path,))
    _deep_update(merged, raw, where="")
    return merged


def _deep_update(target: dict[str, Any], updates: dict[str, Any], where: str) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value, f"{where}{key}.")
        else:
            target[key] = value


# Keys whose default is null: the type a non-null value must have (else ``run.max_steps=abc``
# would pass validation and fail deep inside training).
NULLABLE_TYPES: dict[str, type] = {"run.epoch_size": int, "run.max_steps": int, "run.num_threads": int,
                                   "run.keep_every": int}


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Match the default's type where it is unambiguous (YAML reads ``1e-4`` as a string)."""
    if default is None and value is not None and key in NULLABLE_TYPES:
        default = NULLABLE_TYPES[key]()
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
    return value


def _validate_merge(target: dict[str, Any], updates: dict[str, Any], where: str = "") -> None:
    """Merge ``updates`` into ``target`` (a copy of DEFAULTS), rejecting unknown keys."""
    for key, value in updates.items():
        dotted = f"{where}{key}"
        if where == "" and key in FREE_SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected a mapping")
            target[key].update(copy.deepcopy(value))
            continue
        if key not in target:
            raise ValueError(f"unknown config key {dotted!r}; known here: {sorted(target)}")
        if isinstance(target[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{dotted}: expected a mapping, got {value!r}")
            _validate_merge(target[key], value, f"{dotted}.")
        else:
            target[key] = _coerce(value, target[key], dotted)


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": "1e-4" parsed as YAML}}``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key.sub=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {text!r} has an empty key")
    value: Any = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(parts):
        value = {part: value}
    return value


def resolve_config(preset: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """DEFAULTS <- preset chain <- overrides, validated (unknown keys and bad values are errors)."""
    config = copy.deepcopy(DEFAULTS)
    if preset is not None:
        raw = copy.deepcopy(preset) if isinstance(preset, dict) else _load_yaml_chain(preset)
        _validate_merge(config, raw)
    for text in overrides or []:
        _validate_merge(config, parse_override(text))
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    ModelConfig.from_dict(config["model"])
    ObjectiveConfig.from_dict(config["objective"])
    run, optim = config["run"], config["optim"]
    choices = {"loader": ("dali", "synthetic"), "device": ("auto", "cpu", "cuda"),
               "precision": ("bf16", "fp16", "fp32")}
    for key, allowed in choices.items():
        if run[key] not in allowed:
            raise ValueError(f"run.{key} must be one of {allowed}, got {run[key]!r}")
    if optim["batch_size"] < 1 or run["epochs"] < 1:
        raise ValueError("optim.batch_size and run.epochs must be >= 1")
    if len(optim["betas"]) != 2:
        raise ValueError("optim.betas needs two values")
    _check_ranges(config)


_INT32_MAX = 2**31 - 1  # DALI takes int32 arguments: a larger shuffle_buffer crashes it without a message
# dotted key -> (low, high) inclusive; None values are allowed where the default is None
_RANGES: dict[str, tuple[float, float]] = {
    "run.seed": (0, 2**32 - 1), "run.epochs": (1, _INT32_MAX), "run.epoch_size": (1, 2**53),
    "run.max_steps": (1, 2**53), "run.num_threads": (1, 4096), "run.prefetch": (0, 64),
    "run.log_every": (1, 2**53), "run.checkpoint_every": (1, 2**53), "run.keep_checkpoints": (0, 2**20),
    "run.keep_every": (1, 2**53),
    "optim.batch_size": (1, _INT32_MAX), "optim.lr": (0.0, 1e3), "optim.end_lr": (0.0, 1e3),
    "optim.pred_lr": (0.0, 1e3), "optim.warmup_epochs": (0.0, 1e6), "optim.weight_decay": (0.0, 1e3),
    "optim.larc_trust": (0.0, 1e3),
    "data.shuffle_buffer": (1, _INT32_MAX), "data.prefetch": (0, 1024), "data.num_threads": (1, 4096),
}


def _check_ranges(config: dict[str, Any]) -> None:
    """Every numeric option within a sane range (a negative LR, run.max_steps=-1 or a 2^31 shuffle
    buffer would otherwise run, crash DALI, or never stop), and a run folder that is not a root."""
    import math

    for dotted, (low, high) in _RANGES.items():
        section, key = dotted.split(".")
        value = config.get(section, {}).get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ValueError(f"{dotted} must be a number in [{low}, {high}], got {value!r}")
    for beta in config["optim"]["betas"]:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"optim.betas must lie in [0, 1), got {config['optim']['betas']!r}")
    run_dir = str(config["run"]["dir"] or "").strip()
    if not run_dir or Path(run_dir).expanduser().resolve() in (Path("/"), Path.home().resolve()):
        raise ValueError(f"run.dir {config['run']['dir']!r} must name a folder of its own (not /, ~ or empty)")


def save_config(config: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from crisscross.shards.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(config, sort_keys=False))
