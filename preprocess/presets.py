"""Build presets: YAML files of BuildConfig fields (+ engine settings), overridden by the CLI.

A preset is a name from ``preprocess/presets/`` (``default``, ``pretrain_av``, ``finetune_256``,
``audio_only``) or a path. The resolved configuration is saved with every build (``_plan.json``,
``dataset.json["build"]``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from crisscross.preprocess.plan import BuildConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
ENGINE_KEYS = ("workers", "engine", "address", "isolate")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> dict:
    """Read a preset; unknown keys are an error (a typo must not silently build something else)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"preset {name_or_path!r} not found (built-in: {', '.join(preset_names())})")
    values = yaml.safe_load(path.read_text()) or {}
    allowed = {f.name for f in dataclasses.fields(BuildConfig)} | set(ENGINE_KEYS)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return values
