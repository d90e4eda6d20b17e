"""Build presets: YAML files of :class:`BuildPreset` keys (BuildConfig fields + engine settings).

A preset is a name from ``preprocess/presets/`` (``default``, ``pretrain_av``, ``finetune_256``,
``audio_only``) or a path, may name a ``base:`` preset, and is resolved by the one strict loader
of every command (``crisscross.config``): ``key=value`` overrides on top, unknown keys, wrong
types and out-of-range values refused before any source is opened. The resolved configuration
is saved with every build (``_plan.json``, ``dataset.json["build"]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crisscross import config as cfglib
from crisscross.preprocess.engines import ENGINES
from crisscross.preprocess.plan import BuildConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
ENGINE_KEYS = ("workers", "engine", "address", "isolate")


@dataclass(frozen=True)
class BuildPreset(BuildConfig):
    """What a build preset and ``shards build`` overrides may set: the dataset's bytes + the engine."""

    workers: int = 1  # local worker processes
    engine: str = "local"  # local | ray
    address: str | None = None  # Ray cluster address (default: start a local instance)
    isolate: bool = False  # decode each source in its own process

    def __post_init__(self) -> None:
        self.validate()
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not 1 <= self.workers <= 4096:
            raise ValueError(f"workers must be a number in [1, 4096], got {self.workers!r}")

    def build_config(self) -> BuildConfig:
        return BuildConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BuildConfig)})

    def engine_options(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ENGINE_KEYS}


def preset_names() -> list[str]:
    return cfglib.preset_names(PRESET_DIR)


def resolve_preset(name_or_path: str | Path | None = "default", overrides: Iterable[str] = (),
                   options: dict[str, Any] | None = None) -> BuildPreset:
    """Defaults <- preset chain <- ``options`` (flags, keyword arguments) <- ``key=value`` overrides."""
    layer = cfglib.read_preset(name_or_path, PRESET_DIR) if name_or_path is not None else {}
    return cfglib.load(BuildPreset, layer, dict(options or {}), overrides=list(overrides))


def load_preset(name_or_path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A preset resolved to every BuildPreset key (a typo, a bad type or value is an error)."""
    return cfglib.to_dict(resolve_preset(name_or_path, overrides))
