"""Evaluation configuration: typed sections, YAML presets with ``base:``, ``key.sub=value`` overrides.

A preset names the protocol's numbers (clips per sample, input length, augmentation, costs,
finetuning schedule); ``key=value`` words (or ``--set key=value``) override any of them on the
command line. The schema is :class:`EvalConfig` with typed sections (``train_pass``/``test_pass``:
:class:`PassConfig`, ``svm``: :class:`SVMConfig`, ``fc``: :class:`FCConfig`, ``retrieval``:
:class:`RetrievalConfig`, ``finetune``: :class:`FinetuneConfig`, ``loader``:
:class:`EvalLoaderConfig`); the one strict loader of every command (``crisscross.config``) refuses
an unknown key, a wrong type or a bad value before the dataset is opened, so a typo in
``svm.*`` never costs a feature-extraction pass. Every key: docs/evaluate.md#config-keys.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crisscross import config as cfglib

PRESET_DIR = Path(__file__).resolve().parent / "presets"
SAMPLINGS = ("uniform", "random")
AUGMENTS = ("none", "linear")
SPLIT_MODES = ("auto", "folds", "split")
CLASSIFIERS = ("svm", "fc")
MODALITIES = ("video", "audio")
# loader options that must match the encoder's training input (train/export.py "input")
FRONT_END_KEYS = ("frame_stride", "fps", "sample_rate", "n_mels", "n_fft", "hop", "logmel_mean", "logmel_std",
                  "audio_frontend", "video_mean", "video_std")
RETRIEVAL_DIRECTIONS = ("video->video", "audio->audio", "video->audio", "audio->video")
# Linear SVM costs swept by cross-validation on the training side (supplement E.1)
COSTS: tuple[float, ...] = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 1.0)
FEATURE_MODES = ("online", "cached")


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
class SVMConfig(cfglib.Strict):
    """Linear SVM (evaluate/linear.py): cost chosen by grouped CV on the training side."""

    SECTION = "svm."

    costs: list[float] = field(default_factory=lambda: list(COSTS))
    cv_folds: int = 5  # reduced to the number of groups when there are fewer
    # The paper feeds the pooled features as they are. Standardising them is available, but makes
    # the weakly regularised fits (C = 1) converge far more slowly (16-60x on ESC-10).
    standardize: bool = False  # StandardScaler fitted on the training clips of each fit
    dual: Any = False  # liblinear primal (False): fast for as many clips as feature dims or more; True | "auto"
    max_iter: int = 2000
    n_jobs: int = -1  # joblib workers for the (cost, fold) grid; -1 = all cores
    seed: int = 0

    def __post_init__(self) -> None:
        self.costs = tuple(float(c) for c in self.costs)  # type: ignore[assignment]
        if list(self.costs) != sorted(self.costs) or not self.costs or min(self.costs) <= 0:
            raise ValueError(f"svm.costs must be a non-empty increasing list of positive costs, got {list(self.costs)}")
        if self.dual not in (True, False, "auto"):
            raise ValueError(f"svm.dual must be true, false or auto, got {self.dual!r}")
        if self.cv_folds < 2 or self.max_iter < 1:
            raise ValueError("svm.cv_folds must be >= 2 and svm.max_iter >= 1")


@dataclass
class FCConfig(cfglib.Strict):
    """Linear FC classifier (evaluate/fc.py)."""

    SECTION = "fc."

    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [20, 25])
    gamma: float = 0.1
    seed: int = 0
    features: str = "online"  # online: fresh clips per epoch through the frozen backbone; cached: one pass

    def __post_init__(self) -> None:
        if self.features not in FEATURE_MODES:
            raise ValueError(f"fc.features must be one of {FEATURE_MODES}, got {self.features!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("fc.epochs and fc.batch_size must be >= 1")


@dataclass
class FinetuneConfig(cfglib.Strict):
    """Full finetuning (evaluate/finetune.py). Defaults: Table S11, UCF101 8x224^2."""

    SECTION = "finetune."

    epochs: int = 20
    batch_size: int = 64  # clips per optimizer step, over all ranks
    lr: float = 0.0005
    milestones: list[int] = field(default_factory=lambda: [6, 10, 14])
    gamma: float = 0.3
    weight_decay: float = 0.0
    momentum: float = 0.9
    dropout: float = 0.0
    clips_per_sample: int = 10  # passes per epoch, one random clip per training video each
    shuffle_buffer: int = 256  # samples each rank's reader mixes (seeded per epoch and pass), as in pretraining
    sync_bn: bool = True  # several GPUs: batch-norm statistics over the global batch (GPU-only in PyTorch)
    eval_every_epoch: bool = False  # per-epoch test accuracy, comparison only
    max_epochs_this_run: int | None = None  # stop this invocation early (time-sliced jobs); resume later
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.clips_per_sample < 1 or not 1 <= self.shuffle_buffer < 2**31:
            raise ValueError("finetune.batch_size, finetune.clips_per_sample must be >= 1 and "
                             "finetune.shuffle_buffer in [1, 2^31)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"finetune.dropout must lie in [0, 1), got {self.dropout}")


@dataclass
class RetrievalConfig:
    directions: list[str] = field(default_factory=lambda: list(RETRIEVAL_DIRECTIONS))
    ks: list[int] = field(default_factory=lambda: [1, 5, 20])

    def __post_init__(self) -> None:
        if not all(k >= 1 for k in self.ks):
            raise ValueError(f"retrieval.ks must be a list of positive integers, got {list(self.ks)!r}")
        bad = set(self.directions) - set(RETRIEVAL_DIRECTIONS)
        if bad:
            raise ValueError(f"unknown retrieval directions {sorted(bad)}; known: {RETRIEVAL_DIRECTIONS}")


@dataclass
class EvalLoaderConfig:
    """Evaluation loader options. The front end left unset (null) is the encoder's own, from its
    backbones.json "input" (what it was trained on), else the data defaults."""

    frame_stride: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    n_mels: int | None = None
    n_fft: int | None = None
    hop: int | None = None
    logmel_mean: float | None = None
    logmel_std: float | None = None
    audio_frontend: str | None = None  # logmel | logspec | logfbank (None: the encoder's own)
    # RGB normalisation per channel (pixels in [0, 1]); None: the encoder's own (imported weights:
    # their release's, docs/weights.md), else the Kinetics statistics
    video_mean: list[float] | None = None
    video_std: list[float] | None = None
    num_threads: int = 2  # DALI threads
    # samples failing the loader's screen (shards/screen.py) are skipped and listed in results.json,
    # up to this fraction of the dataset (the training default); 0 = strict: any bad sample stops
    max_bad_fraction: float = 1e-4

    def __post_init__(self) -> None:
        for key in ("frame_stride", "n_mels", "n_fft", "hop", "sample_rate", "num_threads"):
            value = getattr(self, key)
            if value is not None and not 1 <= value <= 1 << 20:
                raise ValueError(f"loader.{key} must be a number in [1, {1 << 20}], got {value!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"loader.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction!r}")
        for key in ("video_mean", "video_std"):
            value = getattr(self, key)
            if value is not None and (len(value) != 3 or (key == "video_std" and min(value) <= 0)):
                raise ValueError(f"loader.{key} must be 3 numbers (R, G, B){' > 0' if key == 'video_std' else ''}, "
                                 f"got {value!r}")
        from crisscross.shards.augment import AUDIO_FRONTENDS  # lazily: DALI is not needed to read a config

        if self.audio_frontend is not None and self.audio_frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"loader.audio_frontend must be one of {AUDIO_FRONTENDS}, got {self.audio_frontend!r}")


@dataclass
class EvalConfig:
    dataset: str = ""  # name used in results rows; default: the dataset the shards hold (evaluate.report.dataset_from_shards)
    pretrain: str = ""  # report column; default: "random" for --checkpoint random, else the checkpoint's name
    modality: str = "audio"  # linear: which encoder's features (fusion uses both)
    # The input. None (unset): the encoder's own, from its backbones.json "input" (what it was
    # trained on), else the data defaults 8 / 112 / 2.0; a preset or an override gives the protocol's.
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
    svm: SVMConfig = field(default_factory=SVMConfig)
    fc: FCConfig = field(default_factory=FCConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    plots: bool = True
    model: Any = None  # architecture for --checkpoint random: "tiny", or ModelConfig keys
    loader: EvalLoaderConfig = field(default_factory=EvalLoaderConfig)
    device: str = "auto"  # auto: CUDA when present, else the CPU (crisscross.train.distributed.resolve_device)
    seed: int = 0

    def __post_init__(self) -> None:
        cfglib.coerce_sections(self)
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.splits not in SPLIT_MODES:
            raise ValueError(f"splits must be one of {SPLIT_MODES}, got {self.splits!r}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.batch_size < 1 or self.feature_chunk < 1:
            raise ValueError("batch_size and feature_chunk must be >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalConfig:
        return cfglib.from_dict(cls, copy.deepcopy(values))

    def to_dict(self) -> dict[str, Any]:
        return cfglib.to_dict(self)

    def resolve_input(self, input_spec: dict[str, dict[str, Any]] | None, *, source: str = "") -> list[str]:
        """Fill the input the config leaves open from the encoder's training input (in place).

        The protocol's frames / crop / audio_seconds (preset or --set) win, and so does any front
        end key given under ``loader``; the rest come from ``input_spec`` (backbones.json
        "input"), or from the data defaults when the encoder recorded none. Returns warnings.
        """
        from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD
        from crisscross.train.export import default_encoder_input

        warnings = []
        if input_spec is None:
            input_spec = default_encoder_input()
            if source and source != "random":
                warnings.append(f"{source}: backbones.json records no encoder input (exported before format 2); "
                                f"evaluating with the default input and audio front end {input_spec}")
        flat = {"audio_frontend": "logmel", **input_spec["video"], **input_spec["audio"]}  # older inputs: log-mel
        for key, default in (("video_mean", KINETICS_MEAN), ("video_std", KINETICS_STD)):
            flat.setdefault(key, list(default))  # inputs recorded before the normalisation: Kinetics
        for key in ("frames", "crop", "audio_seconds"):
            if getattr(self, key) is None:
                setattr(self, key, flat[key])
        for key in FRONT_END_KEYS:
            if getattr(self.loader, key) is None:
                setattr(self.loader, key, flat[key])
        return warnings

    def loader_args(self) -> dict[str, Any]:
        """The evaluation loader's view, stated rates and threads (after ``resolve_input``): every
        evaluator builds its loader from these (``build_eval_loader(dir, **cfg.loader_args(), ...)``)."""
        from crisscross.shards.loader import ViewSpec

        front = self.loader
        view = ViewSpec(frames=self.frames, frame_stride=front.frame_stride, crop=self.crop,
                        audio_seconds=self.audio_seconds, n_mels=front.n_mels, n_fft=front.n_fft, hop=front.hop,
                        logmel_mean=front.logmel_mean, logmel_std=front.logmel_std,
                        audio_frontend=front.audio_frontend or "logmel",
                        **{k: tuple(getattr(front, k)) for k in ("video_mean", "video_std") if getattr(front, k) is not None})
        return {"view": view, "fps": front.fps, "sample_rate": front.sample_rate, "num_threads": front.num_threads,
                "max_bad_fraction": front.max_bad_fraction}

    def input_label(self, modality: str) -> str:
        if modality == "video":
            return f"{self.frames}x{self.crop}^2"
        return f"audio {self.audio_seconds:g}s"


def preset_names() -> list[str]:
    return cfglib.preset_names(PRESET_DIR)


def load_config(config: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> EvalConfig:
    """The defaults, then a preset name or YAML path (with its ``base:`` chain), then the overrides in order."""
    return cfglib.resolve(EvalConfig, config, overrides or [], preset_dir=PRESET_DIR)
