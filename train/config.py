"""Training configuration: typed sections, YAML presets with ``base:``, ``key.sub=value`` overrides.

The schema is :class:`TrainConfig`: ``run`` (:class:`RunConfig`), ``model``
(``crisscross.train.models.ModelConfig``), ``objective`` (``ObjectiveConfig``), ``optim``
(:class:`OptimConfig`), ``data`` (the shard loader's ``crisscross.shards.loader.LoaderConfig``)
and ``synthetic`` (``crisscross.train.synthetic.SyntheticConfig``). A preset
(``train/presets/NAME.yaml`` or any YAML path) may name a ``base`` preset that it updates.
Overrides are ``key.sub=value`` strings, values read as YAML (``optim.lr=1e-4``,
``objective.terms=[sync,intra]``, ``run.max_steps=null``). Merging, types and unknown keys are
checked by the one strict loader of every command (``crisscross.config``, OmegaConf structured
configs), every section's ranges and choices by its dataclass, all before any work starts.

``resolve_config`` returns the resolved config as a plain dict (what ``<run.dir>/config.yaml``
and every checkpoint store); ``train_config(dict)`` gives the typed view of such a dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crisscross import config as cfglib
from crisscross.shards.loader import LoaderConfig
from crisscross.train.models import ModelConfig
from crisscross.train.objective import ObjectiveConfig
from crisscross.train.synthetic import SyntheticConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
LOADERS = ("dali", "synthetic")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("bf16", "fp16", "fp32")
_INT32_MAX = 2**31 - 1  # DALI takes int32 arguments: a larger value crashes it without a message


def check_range(where: str, value: Any, low: float, high: float) -> None:
    """A finite number in [low, high] (None passes: the option is unset)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{where} must be a number in [{low}, {high}], got {value!r}")


def check_choice(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{where} must be one of {allowed}, got {value!r}")


@dataclass
class RunConfig:
    dir: str = "runs/crisscross"
    seed: int = 0
    epochs: int = 100
    epoch_size: int | None = None   # samples per epoch (Table S10 "es"); null = one pass over the shards
    max_steps: int | None = None    # stop early after this many optimizer steps (schedule unchanged)
    loader: str = "dali"               # dali (crisscross.shards.loader) | synthetic (deterministic tensors)
    device: str = "auto"               # auto | cpu | cuda
    precision: str = "bf16"            # bf16 | fp16 (with GradScaler) | fp32
    num_threads: int | None = None  # torch intra-op threads per process; null = torch's default
    sync_bn: bool = True               # convert BatchNorm to SyncBatchNorm under DDP on GPUs
    channels_last: bool = False        # channels_last_3d memory format for the video branch (GPU)
    compile: bool = False              # torch.compile the model
    prefetch: int = 1                  # batches decoded ahead on a background thread (0 = inline)
    log_every: int = 10                # steps between console/TensorBoard/JSONL records
    checkpoint_every: int = 500        # steps between checkpoints (plus one at the end and on SIGTERM)
    keep_checkpoints: int = 3          # newest checkpoints kept; older ones are deleted ...
    keep_every: int | None = None   # ... except steps that are multiples of this (milestones)
    progress: bool = True              # tqdm bar on rank 0
    tensorboard: bool = True
    export: bool = True                # write safetensors backbones to <dir>/export at the end
    init_from: str | None = None    # export dir (e.g. crisscross weights import) whose backbones start the run; not a resume
    init_objective: bool = False       # with init_from a run dir: its whole model and objective state (AVID -> CMA; docs/methods.md)

    def __post_init__(self) -> None:
        check_choice("run.loader", self.loader, LOADERS)
        check_choice("run.device", self.device, DEVICES)
        check_choice("run.precision", self.precision, PRECISIONS)
        for key, (low, high) in {"seed": (0, 2**32 - 1), "epochs": (1, _INT32_MAX), "epoch_size": (1, 2**53),
                                 "max_steps": (1, 2**53), "num_threads": (1, 4096), "prefetch": (0, 64),
                                 "log_every": (1, 2**53), "checkpoint_every": (1, 2**53),
                                 "keep_checkpoints": (0, 2**20), "keep_every": (1, 2**53)}.items():
            check_range(f"run.{key}", getattr(self, key), low, high)
        run_dir = str(self.dir or "").strip()
        if not run_dir or Path(run_dir).expanduser().resolve() in (Path("/"), Path.home().resolve()):
            raise ValueError(f"run.dir {self.dir!r} must name a folder of its own (not /, ~ or empty)")


@dataclass
class OptimConfig:
    name: str = "adam"             # adam (CrissCross, AVID) | sgd with momentum (SvaCLR, STiCA)
    batch_size: int = 512          # global batch; per-rank batch = batch_size / world_size
    lr: float = 2.0e-4             # base LR of encoders + projectors (cosine start)
    end_lr: float = 0.0            # cosine end
    pred_lr: float = 2.0e-3        # constant LR of the predictors
    warmup_epochs: float = 2.0     # linear warmup from 0 (official code; the paper does not say)
    warmup_start_lr: float = 0.0   # warmup starts here (SvaCLR 0.064, STiCA 0.01; CrissCross 0)
    schedule: str = "cosine"       # cosine to end_lr | constant after the warmup
    momentum: float = 0.9          # sgd only
    weight_decay: float = 1.0e-4
    betas: tuple[float, float] = (0.9, 0.999)
    larc: bool = False
    larc_trust: float = 1.0e-3
    larc_clip: bool = True

    def __post_init__(self) -> None:
        from crisscross.train.optim import OPTIMIZERS, SCHEDULES

        check_choice("optim.name", self.name, OPTIMIZERS)
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        for key, (low, high) in {"batch_size": (1, _INT32_MAX), "lr": (0.0, 1e3), "end_lr": (0.0, 1e3),
                                 "pred_lr": (0.0, 1e3), "warmup_epochs": (0.0, 1e6), "weight_decay": (0.0, 1e3),
                                 "larc_trust": (0.0, 1e3), "warmup_start_lr": (0.0, 1e3),
                                 "momentum": (0.0, 1.0)}.items():
            check_range(f"optim.{key}", getattr(self, key), low, high)
        self.betas = tuple(self.betas)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)!r}")


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)  # the shard loader's options (docs/shards.md)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # deterministic tensors: tests, benchmark ceiling


def preset_names() -> list[str]:
    return cfglib.preset_names(PRESET_DIR)


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": 1e-4}}`` (the syntax of every command)."""
    return cfglib.parse_override(text)


def load_train_config(preset: str | Path | dict[str, Any] | None = None,
                      overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- preset chain <- overrides, typed and checked (unknown keys and bad values are errors)."""
    return cfglib.resolve(TrainConfig, preset, overrides or [], preset_dir=PRESET_DIR)


def resolve_config(preset: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The resolved config as a plain dict (what checkpoints and config.yaml store)."""
    return cfglib.to_dict(load_train_config(preset, overrides))


def train_config(config: dict[str, Any] | TrainConfig) -> TrainConfig:
    """The typed view of a resolved config dict (e.g. one read back from a checkpoint)."""
    return cfglib.from_dict(TrainConfig, config)


def save_config(config: dict[str, Any] | TrainConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from crisscross.shards.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(cfglib.to_dict(config), sort_keys=False))
