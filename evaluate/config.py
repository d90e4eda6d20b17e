"""Evaluation configuration: YAML presets + ``key.sub=value`` overrides, saved with every run.

A preset names the protocol's numbers (clips per sample, input length, augmentation, costs,
finetuning schedule); ``--set`` overrides any of them on the command line. Unknown keys are an
error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SAMPLINGS = ("uniform", "random")
AUGMENTS = ("none", "linear")
SPLIT_MODES = ("auto", "folds", "split")
CLASSIFIERS = ("svm", "fc")
MODALITIES = ("video", "audio")
# build_eval_loader arguments that must match the encoder's training input (train/export.py)
FRONT_END_KEYS = ("frame_stride", "fps", "sample_rate", "n_mels", "n_fft", "hop", "logmel_mean", "logmel_std")
RETRIEVAL_DIRECTIONS = ("video->video", "audio->audio", "video->audio", "audio->video")


@dataclass
class PassConfig:
    """One pass of the DALI evaluation loader over the dataset."""

    clips_per_sample: int = 10
    sampling: str = "uniform"
    augment: str = "none"

    def __post_init__(self) -> None:
        if self.clips_per_sample < 1 or self.sampling not in SAMPLINGS or self.augment not in AUGMENTS:
            raise ValueError(f"bad pass config {self}: clips_per_sample >= 1, sampling in {SAMPLINGS}, augment in {AUGMENTS}")


@dataclass
class EvalConfig:
    dataset: str = ""  # name used in results rows; default: the dataset the shards hold (evaluate.report.dataset_from_shards)
    pretrain: str = ""  # report column; default: "random" for --checkpoint random, else the checkpoint's name
    modality: str = "audio"  # linear: which encoder's features (fusion uses both)
    # The input. None (unset): the encoder's own, from its backbones.json "input" (what it was
    # trained on), else the data defaults 8 / 112 / 2.0; a preset or --set gives the protocol's.
    frames: int | None = None
    crop: int | None = None
    audio_seconds: float | None = None
    batch_size: int = 8
    feature_chunk: int = 64  # clips per forward pass
    train_pass: PassConfig = field(default_factory=lambda: PassConfig(10, "random", "linear"))
    test_pass: PassConfig = field(default_factory=lambda: PassConfig(10, "uniform", "none"))
    splits: str = "auto"  # folds: leave-one-fold-out over manifest folds; split: manifest split train/test
    folds: list[int] | None = None  # evaluate only these test folds (None = all)
    classifier: str = "svm"
    svm: dict[str, Any] = field(default_factory=dict)  # crisscross.evaluate.linear.SVMConfig
    fc: dict[str, Any] = field(default_factory=dict)  # crisscross.evaluate.fc.FCConfig
    retrieval: dict[str, Any] = field(default_factory=lambda: {"directions": list(RETRIEVAL_DIRECTIONS), "ks": [1, 5, 20]})
    finetune: dict[str, Any] = field(default_factory=dict)  # crisscross.evaluate.finetune.FinetuneConfig
    plots: bool = True
    model: Any = None  # architecture for --checkpoint random: "tiny", or ModelConfig keys
    # extra build_eval_loader keyword arguments; the front end (FRONT_END_KEYS) left out here is
    # filled from the encoder's backbones.json "input" when the run opens
    loader: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # auto: CUDA when present, else the CPU (crisscross.train.distributed.resolve_device)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_pass", "test_pass"):
            value = getattr(self, name)
            if isinstance(value, dict):
                unknown = sorted(set(value) - {f.name for f in fields(PassConfig)})
                if unknown:
                    raise ValueError(f"unknown {name} keys {unknown}; known: {[f.name for f in fields(PassConfig)]}")
                setattr(self, name, PassConfig(**value))
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.splits not in SPLIT_MODES:
            raise ValueError(f"splits must be one of {SPLIT_MODES}, got {self.splits!r}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        unknown = sorted(set(self.retrieval) - {"directions", "ks"})
        if unknown:  # e.g. retrieval.k=[1] for ks: refused instead of silently using the default ks
            raise ValueError(f"unknown retrieval keys {unknown}; known: ['directions', 'ks']")
        ks = self.retrieval.get("ks", [])
        if not isinstance(ks, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
            raise ValueError(f"retrieval.ks must be a list of positive integers, got {ks!r}")
        bad = set(self.retrieval.get("directions", [])) - set(RETRIEVAL_DIRECTIONS)
        if bad:
            raise ValueError(f"unknown retrieval directions {sorted(bad)}; known: {RETRIEVAL_DIRECTIONS}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EvalConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown eval config keys {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolve_input(self, input_spec: dict[str, dict[str, Any]] | None, *, source: str = "") -> list[str]:
        """Fill the input the config leaves open from the encoder's training input (in place).

        The protocol's frames / crop / audio_seconds (preset or --set) win, and so does any front
        end key given under ``loader``; the rest come from ``input_spec`` (backbones.json
        "input"), or from the data defaults when the encoder recorded none. Returns warnings.
        """
        from crisscross.train.export import default_encoder_input

        warnings = []
        if input_spec is None:
            input_spec = default_encoder_input()
            if source and source != "random":
                warnings.append(f"{source}: backbones.json records no encoder input (exported before format 2); "
                                f"evaluating with the default input and audio front end {input_spec}")
        flat = {**input_spec["video"], **input_spec["audio"]}
        for key in ("frames", "crop", "audio_seconds"):
            if getattr(self, key) is None:
                setattr(self, key, flat[key])
        for key in FRONT_END_KEYS:
            self.loader.setdefault(key, flat[key])
        return warnings

    def input_label(self, modality: str) -> str:
        if modality == "video":
            return f"{self.frames}x{self.crop}^2"
        return f"audio {self.audio_seconds:g}s"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("crisscross.evaluate").joinpath("presets").iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a preset is not a config
        text = path.read_text(encoding="utf-8")
    else:
        preset = resources.files("crisscross.evaluate").joinpath("presets", f"{name_or_path}.yaml")
        if not preset.is_file():
            raise FileNotFoundError(f"no eval preset {name_or_path!r}; presets: {preset_names()} (or give a .yaml path)")
        text = preset.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{name_or_path}: an eval config must be a YAML mapping")
    return data


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """``a.b=value`` sets values["a"]["b"] to the YAML-parsed value."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not key=value")
    dotted, raw = assignment.split("=", 1)
    *parents, leaf = dotted.strip().split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {part!r} is not a mapping")
    node[leaf] = yaml.safe_load(raw)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings merge key by key (so a preset can set one field of ``train_pass``)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("model", "loader"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(config: str | None = None, overrides: list[str] | None = None) -> EvalConfig:
    """The defaults, then a preset name or YAML path, then the overrides in order."""
    values = _merge(EvalConfig().to_dict(), _read_yaml(config) if config else {})
    for assignment in overrides or []:
        apply_override(values, assignment)
    return EvalConfig.from_dict(values)
