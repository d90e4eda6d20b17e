"""Train and eval loaders over WebDataset shards: DALI graphs in, torch tensors out.

``build_train_loader(data_cfg, batch_size=..., rank=..., world_size=...)`` yields per batch
``{"v1", "v2": [B,3,T,crop,crop], "a1", "a2": [B,1,n_mels,F], "key": list[str],
"times": float64 [B,4] (v1, a1, v2, a2 start seconds), "fallback": int32 [B]}``.

Training runs two DALI pipelines per rank (see ``pipelines.py``): a *plan* pipeline (reader,
shuffling, t1/t2, every random draw; DALI-checkpointable) and a *work* pipeline (decoding and
augmentation, stateless given the plan's outputs). DALI 2.4's video decoder does not implement
checkpointing, so a single pipeline could not be checkpointed; with the split, a checkpoint of
the plan pipeline plus the batch counter restores the exact sequence of batches.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvidia.dali.backend import TensorCPU
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

from crisscross.config import Strict
from crisscross.shards.augment import (
    AUDIO_FRONTENDS,
    AudioAugment,
    AugmentConfig,
    LogMel,
    RecordedDraws,
    VideoAugment,
)
from crisscross.shards.bad_samples import DEFAULT_MAX_BAD_FRACTION, BadSample, BadSampleTracker
from crisscross.shards.dataset import Dataset, ShardError  # noqa: F401 (ShardError re-exported)
from crisscross.shards.mjpeg_frames import FrameTables, Mp4Error, jpeg_frames, jpeg_size
from crisscross.shards.pipelines import (
    AUDIO_EXTS,
    READER_NAME,
    UNION_INPUTS,
    EvalGraphSpec,
    ReaderSpec,
    SpeedSpec,
    TrainGraphSpec,
    build_pipeline,
    eval_graph,
    plan_graph,
    probe_gpu_video_decoder,
    split_plan,
    union_inputs,
    uses_audio_union,
    work_graph,
)
from crisscross.shards.screen import ScreenResult, screen_shards
from crisscross.shards.views import FALLBACK_PADDED, FALLBACK_SHRUNK, RELAXATION_MODES, VIEW_ALIGNMENTS, ViewGeometry

# 2: the plan makes every augmentation draw from one random vector (augment.packed_draws);
# a version-1 state resumes on the plan graph that wrote it (one random operator per draw)
STATE_VERSION = 2
STATE_VERSIONS = (1, 2)


# backbones.json "input" (train/export.py): the view keys per modality, rates included
# (video_mean / video_std: the RGB normalisation, per channel on [0, 1] pixels; exports older than
# these keys were all normalised with the Kinetics statistics, which is what reading one gives)
VIDEO_INPUT_KEYS = ("frames", "frame_stride", "crop", "fps", "video_mean", "video_std")
AUDIO_INPUT_KEYS = ("audio_seconds", "sample_rate", "n_mels", "n_fft", "hop", "logmel_mean", "logmel_std",
                    "audio_frontend")


@dataclass(frozen=True)
class ViewSpec:
    """One view of a sample: window, frames, stride, crop, log-mel front end and augmentation.

    The training loader (two views per sample) and the evaluation loader (K clips per sample)
    take the same spec; the rates come from the shards (``Dataset.fps`` / ``sample_rate``), so
    a spec is rate-free until ``geometry`` / ``mel`` apply them. ``to_input`` is its stored form
    (backbones.json "input", what an exported encoder was trained on), ``from_input`` reads it back."""

    frames: int = 8
    frame_stride: int = 1  # shard frames between view frames
    crop: int = 112
    audio_seconds: float = 2.0
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 160
    logmel_mean: float = LogMel.mean
    logmel_std: float = LogMel.std
    audio_frontend: str = "logmel"  # logmel | logspec | logfbank (shards/augment.py LogMel)
    video_aug: VideoAugment = field(default_factory=VideoAugment)
    audio_aug: AudioAugment = field(default_factory=AudioAugment)
    # The RGB normalisation (per channel, pixels in [0, 1]). It is part of the input, not of the
    # augmentation: it replaces ``video_aug``'s own mean/std (``video_augment``), so ``with_augment``
    # keeps it (imported weights were trained with their own: docs/weights.md)
    video_mean: tuple[float, float, float] = VideoAugment.mean  # Kinetics statistics
    video_std: tuple[float, float, float] = VideoAugment.std

    def video_augment(self) -> VideoAugment:
        """``video_aug`` normalising with this view's ``video_mean`` / ``video_std``."""
        return replace(self.video_aug, mean=tuple(self.video_mean), std=tuple(self.video_std))

    def geometry(self, fps: float, sample_rate: int) -> ViewGeometry:
        return ViewGeometry(self.frames, self.frame_stride, self.audio_seconds, fps, sample_rate)

    def mel(self, sample_rate: int) -> LogMel:
        return LogMel(sample_rate, self.n_fft, self.hop, self.n_mels, mean=self.logmel_mean, std=self.logmel_std,
                      frontend=self.audio_frontend)

    def with_augment(self, augment: str) -> ViewSpec:
        """``none``: no augmentation; ``linear``: the linear-evaluation set (Tables S3/S4: no blur,
        audio time warp); ``train``: as given (the pretraining set)."""
        if augment == "none":
            return replace(self, video_aug=VideoAugment.disabled(), audio_aug=AudioAugment.disabled())
        if augment == "linear":
            return replace(self, video_aug=VideoAugment(blur=False), audio_aug=AudioAugment(time_warp=True))
        if augment == "train":
            return self
        raise ValueError(f"augment must be 'none' or 'linear', not {augment!r}")

    def to_input(self, fps: float, sample_rate: int) -> dict[str, dict[str, Any]]:
        """backbones.json "input": ``{"video": {frames, frame_stride, crop, fps}, "audio": {...}}``."""
        values = dict(asdict(self), fps=float(fps), sample_rate=int(sample_rate))
        values.update(video_mean=[float(m) for m in self.video_mean], video_std=[float(s) for s in self.video_std])
        return {"video": {k: values[k] for k in VIDEO_INPUT_KEYS}, "audio": {k: values[k] for k in AUDIO_INPUT_KEYS}}

    @classmethod
    def from_input(cls, spec: dict[str, dict[str, Any]], **augment: Any) -> ViewSpec:
        """A spec from a backbones.json "input" (its rates are returned by ``input_rates``)."""
        flat = {"audio_frontend": "logmel", **spec["video"], **spec["audio"]}  # exports before front ends: log-mel
        # exports before video_mean / video_std were normalised with the Kinetics statistics
        flat.update({k: tuple(float(v) for v in flat.get(k, getattr(cls, k))) for k in ("video_mean", "video_std")})
        return cls(**{k: flat[k] for k in (*VIDEO_INPUT_KEYS, *AUDIO_INPUT_KEYS) if k not in ("fps", "sample_rate")},
                   **augment)


class BadSampleLimitError(ShardError):
    """More bad samples than ``data.max_bad_fraction`` allows (shards/bad_samples.py); the message
    names their keys and shards. The trainer saves a checkpoint before it stops with this error."""


@dataclass(frozen=True)
class SpeedConfig(Strict):
    """``data.speed``: SvaCLR's speed co-augmentation (docs/shards.md "Speed views"). View 2's
    video and audio speeds are drawn per sample, uniformly and independently from the two sets
    (``tie``: one draw used for both); view 1 stays at speed 1. Off by default."""

    SECTION = "data.speed."

    enabled: bool = False
    video: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # SvaCLR's best set, [1, 4] (Table 1)
    audio: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    tie: bool = False  # one speed for both modalities of a sample (the sets must then be equal)

    def __post_init__(self) -> None:
        for name in ("video", "audio"):
            values = list(getattr(self, name))
            if not values or any(int(v) != v or not 1 <= v <= 16 for v in values):
                raise ValueError(f"data.speed.{name} must be a non-empty list of integers in [1, 16], got {values!r}")
        if self.tie and sorted(self.video) != sorted(self.audio):
            raise ValueError("data.speed.tie needs the same video and audio speed sets")

    def spec(self) -> SpeedSpec | None:
        if not self.enabled:
            return None
        return SpeedSpec(tuple(int(v) for v in self.video), tuple(int(a) for a in self.audio), bool(self.tie))


@dataclass(frozen=True)
class LoaderConfig(Strict):
    """The ``data`` section of a training config (typed and checked by ``crisscross.config``)."""

    SECTION = "data."

    shards: str = ""  # dataset directory (holds {name}-000000.tar [+ .idx], manifest.parquet); required to train
    relaxation: str = "mild"  # none|mild|medium|extreme|extreme_official|mixed
    extreme_gap: float = 3.0  # seconds between views in extreme_official
    # paper: both modalities of a view start together (section 3.2); official: the official code's
    # per-modality view-2 offsets with its within-view video jitter (shards/views.py)
    view_alignment: str = "paper"
    frames: int = 8
    frame_stride: int = 1  # shard frames between view frames (16 fps shards: 8 frames = 0.5 s)
    crop: int = 112
    audio_seconds: float = 2.0
    # The rates are the shards' own (dataset.json, shards.Dataset). Stating one is optional: a
    # stated value the shards do not hold is refused rather than mis-timing every view.
    fps: float | None = None
    sample_rate: int | None = None
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 160
    logmel_mean: float = LogMel.mean  # normalisation of logmel/logspec (logfbank is never normalised)
    logmel_std: float = LogMel.std
    audio_frontend: str = "logmel"  # logmel | logspec (AVID) | logfbank (GDT/STiCA/SvaCLR): docs/shards.md
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # SvaCLR's speed views (off by default)
    num_threads: int = 2
    shuffle: bool = True
    shuffle_buffer: int = 256
    prefetch: int = 2
    missing_components: str = "skip"  # skip: samples lacking video or audio are dropped; or error
    # bad samples (undecodable, or index and payload disagree) are skipped, replaced within the
    # batch and counted up to this fraction of the samples seen (shards/bad_samples.py); 0 = strict
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.speed, dict):  # LoaderConfig(speed={...}) in Python code
            object.__setattr__(self, "speed", SpeedConfig.from_dict(self.speed))
        if self.relaxation not in RELAXATION_MODES:
            raise ValueError(f"data.relaxation must be one of {RELAXATION_MODES}, not {self.relaxation!r}")
        if self.view_alignment not in VIEW_ALIGNMENTS:
            raise ValueError(f"data.view_alignment must be one of {VIEW_ALIGNMENTS}, not {self.view_alignment!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1] (0 = stop at the first bad sample), "
                             f"got {self.max_bad_fraction!r}")
        if self.audio_frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"data.audio_frontend must be one of {AUDIO_FRONTENDS}, not {self.audio_frontend!r}")
        if self.missing_components not in ("skip", "error"):
            raise ValueError("data.missing_components must be 'skip' or 'error'")
        if self.frames < 1 or self.crop < 1 or not self.audio_seconds > 0:
            raise ValueError("data.frames, data.crop and data.audio_seconds must be positive")
        # DALI takes int32 arguments: a 2^31 shuffle buffer would crash it without a message
        for key, (low, high) in {"shuffle_buffer": (1, 2**31 - 1), "prefetch": (0, 1024), "num_threads": (1, 4096),
                                 "frame_stride": (1, 4096), "n_mels": (1, 4096), "n_fft": (1, 1 << 20),
                                 "hop": (1, 1 << 20)}.items():
            value = getattr(self, key)
            if not low <= value <= high:
                raise ValueError(f"data.{key} must be a number in [{low}, {high}], got {value!r}")

    def require_shards(self) -> LoaderConfig:
        if not self.shards:
            raise ValueError("data config: 'shards' (the dataset directory) is required")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def view(self) -> ViewSpec:
        """This config's view (the pretraining augmentations of ``augment``)."""
        return ViewSpec(self.frames, self.frame_stride, self.crop, self.audio_seconds, self.n_mels, self.n_fft,
                        self.hop, self.logmel_mean, self.logmel_std, self.audio_frontend, self.augment.video,
                        self.augment.audio, video_mean=tuple(self.augment.video.mean),
                        video_std=tuple(self.augment.video.std))

    def rates(self) -> tuple[float, int]:
        """The shards' (fps, sample rate): from the dataset when ``shards`` is set, else the builder's defaults."""
        if self.shards:
            dataset = Dataset.open(self.shards)
            return dataset.fps, dataset.sample_rate
        from crisscross.shards import format as fmt

        return float(fmt.DEFAULT_FPS), fmt.DEFAULT_SAMPLE_RATE

    def graph_spec(self, fps: float | None = None, sample_rate: int | None = None) -> TrainGraphSpec:
        """The training graph's spec at the given rates (default: the shards' own, ``rates()``)."""
        if fps is None or sample_rate is None:
            fps, sample_rate = self.rates()
        if self.audio_seconds * sample_rate < self.hop:
            raise ValueError(f"data.audio_seconds={self.audio_seconds} is shorter than one hop ({self.hop} samples "
                             f"at {sample_rate} Hz)")
        return train_graph_spec(self.view(), fps, sample_rate, relaxation=self.relaxation,
                                extreme_gap=self.extreme_gap, view_alignment=self.view_alignment,
                                speed=self.speed.spec())


def train_graph_spec(view: ViewSpec, fps: float, sample_rate: int, *, relaxation: str, extreme_gap: float,
                     view_alignment: str, speed: SpeedSpec | None = None) -> TrainGraphSpec:
    """The training graph's spec: a view at the shards' rates plus how the two views are placed."""
    return TrainGraphSpec(geometry=view.geometry(fps, sample_rate), crop=view.crop, relaxation=relaxation,
                          extreme_gap=extreme_gap, view_alignment=view_alignment, video_aug=view.video_augment(),
                          audio_aug=view.audio_aug, mel=view.mel(sample_rate), speed=speed)


def eval_graph_spec(view: ViewSpec, fps: float, sample_rate: int, *, clips: int, sampling: str,
                    modalities: tuple[str, ...]) -> EvalGraphSpec:
    """The evaluation graph's spec: a view at the shards' rates, K clips per sample."""
    return EvalGraphSpec(clips=clips, sampling=sampling, geometry=view.geometry(fps, sample_rate), crop=view.crop,
                         video="video" in modalities, audio="audio" in modalities, video_aug=view.video_augment(),
                         audio_aug=view.audio_aug, mel=view.mel(sample_rate))


# ----------------------------------------------------------------------------- dataset files


@dataclass(frozen=True)
class ShardSet:
    """The files a loader reads, with the dataset they belong to (shards.Dataset)."""

    tars: tuple[str, ...]
    indexes: tuple[str, ...] | None
    dataset: Dataset

    @property
    def manifest(self) -> dict[str, dict[str, Any]]:
        """key -> manifest row (empty when there is no manifest)."""
        return self.dataset.by_key()

    @property
    def audio_format(self) -> str:
        """pcm or flac (``--audio-format`` of the build); the DALI graphs read either."""
        return self.dataset.audio_format

    def check_rates(self, fps: float | None = None, sample_rate: int | None = None) -> None:
        """A stated rate must be the shards' own (the view durations assume them); the audio
        format must be one the graphs read."""
        self.dataset.check_rates(fps=fps, sample_rate=sample_rate, what="the loader config")
        if self.audio_format not in AUDIO_EXTS:
            raise ValueError(f"the loader reads audio as {sorted(AUDIO_EXTS)}; these shards hold {self.audio_format!r}")


def _check_shard(tar: Path, idx: Path | None) -> None:
    """Cheap integrity check: the tar exists, and its DALI index (if any) fits inside it."""
    if not tar.is_file():
        raise ShardError(f"shard {tar} does not exist")
    size = tar.stat().st_size
    if size == 0 or size % 512:
        raise ShardError(f"shard {tar} is truncated or not a tar file ({size} bytes, not a multiple of 512)")
    if idx is None:
        return
    lines = idx.read_text().split("\n")
    for line in lines[1:]:
        parts = line.split()
        # wds2idx v1.2 lines: (ext offset size member_name) per component; v1.1: (ext offset size)
        step = 4 if lines[0].startswith("v1.2") else 3
        if not all(p.isdigit() for i in range(0, len(parts) - 2, step) for p in parts[i + 1:i + 3]):
            raise ShardError(f"index {idx} is malformed (a line is not <ext> <offset> <size> groups); rebuild the shard")
        for i in range(0, len(parts) - 2, step):
            if int(parts[i + 1]) + int(parts[i + 2]) > size:
                raise ShardError(f"shard {tar} is truncated: its index {idx.name} points past its end ({size} bytes)")


# A shard briefly missing or short on a network file system (a copy or a rename in flight, a
# client cache catching up) is looked at again after these pauses, before it counts as bad.
SHARD_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)


def _check_shards(tars: list[Path]) -> bool:
    """Every shard exists and is whole (ShardError otherwise); returns whether all have an ``.idx``."""
    missing = [str(t) for t in tars if not t.is_file()]
    if missing:  # all of them at once, before any work: a partial copy is fixed in one go
        raise ShardError(f"{len(missing)} of {len(tars)} shards of {tars[0].parent} do not exist: {missing}")
    have_idx = all(t.with_suffix(".idx").exists() for t in tars)
    for tar in tars:
        _check_shard(tar, tar.with_suffix(".idx") if have_idx else None)
    return have_idx


def find_shards(directory: str | os.PathLike, retry_delays: tuple[float, ...] = SHARD_RETRY_DELAYS) -> ShardSet:
    """The dataset's ``*.tar`` shards (dataset.json's list, else sorted), their ``.idx`` files
    when every shard has one, each checked for truncation; the dataset opened once (shards.Dataset).
    A missing or short shard is re-checked after each of ``retry_delays`` (seconds) before the
    error, which then lists every missing shard."""
    dataset = Dataset.open(directory)
    tars = list(dataset.shards)
    if not tars:
        raise FileNotFoundError(f"no *.tar shards in {dataset.root}")
    for attempt, delay in enumerate((*retry_delays, None)):
        try:
            have_idx = _check_shards(tars)
            break
        except ShardError as error:
            if delay is None:
                raise
            print(f"shards: {error}; looking again in {delay:g} s (attempt {attempt + 1} of {len(retry_delays)})",
                  file=sys.stderr)
            time.sleep(delay)
    idx = [t.with_suffix(".idx") for t in tars]
    return ShardSet(tuple(map(str, tars)), tuple(map(str, idx)) if have_idx else None, dataset)


def _keys_from_source_info(batch: np.ndarray) -> list[str]:
    """Padded ``path:offset:key.ext`` bytes -> sample keys (WebDataset keys contain no dots)."""
    keys = []
    for row in batch:
        info = bytes(row).rstrip(b"\0").decode("utf-8", errors="replace")
        keys.append(info.rsplit(":", 1)[-1].split(".", 1)[0])
    return keys


def _shards_of(keys_info: np.ndarray) -> list[str]:
    return sorted({bytes(r).rstrip(b"\0").decode("utf-8", "replace").rsplit(":", 2)[0] for r in keys_info})


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copy a dense DALI batch into a new torch tensor on ``device``. On the CPU the copy goes into
    a numpy array that the tensor then wraps: numpy asks the kernel for huge pages for large
    arrays, torch's allocator does not (unless ``THP_MEM_ALLOC_ENABLE``), and first touching a
    fresh 19 MB batch in 4 KiB pages cost more than the copy itself (measured on the default
    ``bench loader`` graph: 0.41 vs 0.86 ms per clip for the four outputs). On a GPU, DALI's
    PyTorch plugin copies on the current stream."""
    dense = tensor_list.as_tensor()
    if device.type == "cpu":
        return torch.from_numpy(np.array(dense, copy=True))
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, out, cuda_stream=stream)
    return out


def dali_placement(device: str | torch.device) -> tuple[torch.device, str, int | None]:
    """The one place a loader turns a device into DALI's terms: (torch device of the batches,
    DALI device ``gpu``/``cpu``, GPU id). ``device`` goes through
    ``crisscross.train.distributed.resolve_device`` (``auto``, ``cpu``, ``cuda`` = this process's
    GPU, ``cuda:N``; never a guessed ``cuda:0``)."""
    from crisscross.train.distributed import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return resolved, "gpu", resolved.index
    return resolved, "cpu", None


# ----------------------------------------------------------------------------- training


class TrainLoader:
    """One rank's training batches; iterate once per epoch. ``len()`` = batches per epoch (equal on
    every rank: ``floor(floor(N / world_size) / batch_size)``; the rest of a shard is dropped)."""

    def __init__(self, config: LoaderConfig, *, batch_size: int, rank: int, world_size: int, device: str, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.config, self.batch_size, self.rank, self.world_size, self.seed = config, batch_size, rank, world_size, seed
        self.device, self._dali_device, self._device_id = dali_placement(device)
        self.shards = find_shards(config.shards)
        self.shards.check_rates(config.fps, config.sample_rate)
        self.fps, self.sample_rate = self.shards.dataset.fps, self.shards.dataset.sample_rate
        self.reader_spec = ReaderSpec(
            paths=self.shards.tars,
            index_paths=self.shards.indexes,
            shard_id=rank,
            num_shards=world_size,
            shuffle=config.shuffle,
            shuffle_buffer=config.shuffle_buffer,
            missing_components=config.missing_components,
            audio_format=self.shards.audio_format,
        )
        self.spec = config.graph_spec(self.fps, self.sample_rate)
        self._draws = RecordedDraws()
        self._audio_union = uses_audio_union(self.spec)  # overlapping audio views share one STFT
        self._frame_sizes: dict[int, np.ndarray] = {}
        self._state_version = STATE_VERSION  # the plan graph's draws: packed (2) or one operator each (1)
        self._frame_tables = FrameTables()
        self._work = self._build_work()
        self._plan = self._build_plan(checkpoint=None)
        num_samples = int(self._plan.reader_meta(READER_NAME)["epoch_size"])
        # DALI pads every rank's slice to ceil(N / W) samples and its last batch (pad_last_batch)
        self._pulls_per_epoch = _ceil_div(_ceil_div(num_samples, world_size), batch_size)
        self._batches_per_epoch = (num_samples // world_size) // batch_size
        if self._batches_per_epoch == 0:
            raise ValueError(f"{num_samples} samples over {world_size} ranks cannot fill one batch of {batch_size}")
        self.epoch, self.batch_in_epoch = 0, 0
        # audio_shared: samples whose two audio views shared one STFT (pipelines.union_inputs)
        self._counts = {"samples": 0, "batches": 0, "fallback_shrunk": 0, "fallback_padded": 0, "bad_samples": 0,
                        "audio_shared": 0}
        self._shared = 0
        self.bad_samples = BadSampleTracker(config.max_bad_fraction, num_samples // world_size)
        # "raise": BadSampleLimitError past the bound; "flag": the batch carries the message in
        # "data_error" instead (the trainer: every rank agrees, a checkpoint is written, then it stops)
        self.limit_action = "raise"
        self._timing = {"batches": 0, "plan_s": 0.0, "feed_s": 0.0, "work_s": 0.0, "to_batch_s": 0.0}

    # -- pipelines
    def _build_work(self):
        def graph():
            return work_graph(self.spec, self._draws, self._dali_device, audio_union=self._audio_union)

        return build_pipeline(graph, device=self._dali_device, batch_size=self.batch_size, num_threads=self.config.num_threads,
                              device_id=self._device_id, seed=self.seed + 7919 * (self.rank + 1), prefetch=1)

    def _build_plan(self, checkpoint: str | None):
        def graph():
            return plan_graph(self.spec, self.reader_spec, self._draws.specs, packed=self._state_version >= 2)

        try:
            return build_pipeline(graph, device="cpu", batch_size=self.batch_size, num_threads=1, device_id=None,
                                  seed=self.seed + 104729 * self.rank, checkpointing=True, checkpoint=checkpoint,
                                  prefetch=self.config.prefetch)
        except RuntimeError as exc:
            raise ShardError(f"cannot open shards {list(self.shards.tars)}: {exc}") from exc

    def _pull_plan(self):
        try:
            return self._plan.run()
        except RuntimeError as exc:
            raise ShardError(f"reading shards {list(self.shards.tars)} failed: {exc}") from exc

    def _run_work(self, plan_outputs) -> tuple:
        """Feed the plan's batch to the work pipeline and run it (the run is timed apart from the
        feeding, which is this thread's own Python work: see ``timing()``)."""
        started = time.perf_counter()
        info, fed_jpegs, mapping = self._feed_work(plan_outputs)  # fed_jpegs: kept alive until the run is done
        fed = time.perf_counter()
        try:
            outputs = self._work.run()
        except RuntimeError as exc:
            outputs, mapping = self._decode_around_bad(plan_outputs, info, fed_jpegs, mapping, exc)
        self._timing["feed_s"] += fed - started
        self._timing["work_s"] += time.perf_counter() - fed
        del fed_jpegs
        self._mapping = mapping
        return outputs

    def _decode_around_bad(self, plan_outputs, info, fed_jpegs, mapping: list[int], exc: Exception):
        """The decoder failed on the batch: decode each sample alone to find the failing ones,
        record them, and decode the batch again with them replaced. The work pipeline is
        stateless given its inputs, so it is rebuilt after a failure without changing any view."""
        self._rebuild_work()
        failed: list[int] = []
        for b in sorted(set(mapping)):
            self._feed_inputs(plan_outputs, fed_jpegs, [b])
            try:
                self._work.run()
            except RuntimeError as sample_exc:
                failed.append(b)
                self._rebuild_work()
                self._record_bad(info, b, "decode", "decoder: " + " ".join(str(sample_exc).split())[:300])
        if not failed:  # the batch fails but no sample alone does: not a bad sample, a real error
            raise ShardError(f"decoding samples {_keys_from_source_info(info)} from shard(s) {_shards_of(info)} "
                             f"failed: {exc}") from exc
        mapping = self._replacements(info, [m if m not in failed else -1 for m in mapping])
        self._feed_inputs(plan_outputs, fed_jpegs, mapping)  # the caller keeps fed_jpegs alive
        return self._work.run(), mapping

    def _rebuild_work(self) -> None:
        """A fresh work pipeline after a decoding error (the same graph: its draw inputs are
        recorded again under the same names, in the same order)."""
        specs = list(self._draws.specs)
        del self._work
        self._draws = RecordedDraws()
        self._work = self._build_work()
        if self._draws.specs != specs:
            raise RuntimeError("rebuilding the work pipeline changed its random draws")

    def _record_bad(self, info: np.ndarray, b: int, stage: str, reason: str) -> None:
        source = info[b].tobytes().rstrip(b"\0").decode("utf-8", "replace")
        self.bad_samples.add(BadSample(key=_keys_from_source_info(info[b : b + 1])[0], shard=source.rsplit(":", 2)[0],
                                       reason=reason, stage=stage, seen=self._counts["samples"], epoch=self.epoch))
        self._counts["bad_samples"] += 1

    def _replacements(self, info: np.ndarray, mapping: list[int]) -> list[int]:
        """Each bad slot (-1) takes the next good sample of the batch (cyclically)."""
        good = [m for m in mapping if m >= 0]
        if not good:
            keys = _keys_from_source_info(info)
            raise ShardError(f"every sample of a batch is bad ({keys} in shard(s) {_shards_of(info)}): "
                             "check the shards with `crisscross shards verify`")
        return [m if m >= 0 else good[b % len(good)] for b, m in enumerate(mapping)]

    def _feed_work(self, plan_outputs) -> tuple[np.ndarray, list[list[TensorCPU]], list[int]]:
        """Hand the plan's batch to the work pipeline's external sources; returns the key info
        and the fed JPEG tensors. The only per-sample Python: slicing the planned JPEG frames out
        of each (memory-mapped) MP4 (mjpeg_frames.py: one vectorised table lookup per sample, one
        slice per frame). Each slice is wrapped in a DALI ``TensorCPU`` here (zero-copy):
        ``feed_input`` then skips its per-element type probing, which cost more than the
        slicing itself (measured: docs/scaling.md, "The loader's feeding thread")."""
        plan, draws = split_plan(plan_outputs, packed=self._state_version >= 2)
        video = plan["video"]
        info = plan["key"].as_array()
        frame_ids = plan["frames"].as_array()
        per_frame: list[list[TensorCPU]] = [[None] * len(info) for _ in range(frame_ids.shape[1])]  # type: ignore[list-item]
        mapping = list(range(len(info)))  # a bad sample's slot gets a good sample's index
        # (height, width) of the frames whose size a crop box reads (RecordedDraws.frame_size)
        self._frame_sizes = {slot: np.zeros((len(info), 2), np.float32) for slot in set(self._draws.size_slots)}
        for b, row in enumerate(info):
            source = row.tobytes().rstrip(b"\0").decode("utf-8", "replace")
            data = np.asarray(video[b])  # zero-copy view
            try:  # parses the MP4's sample table against the frames the index planned
                jpegs = jpeg_frames(data, self._frame_tables.get(source, data), frame_ids[b])
                for slot, size in self._frame_sizes.items():
                    size[b] = jpeg_size(jpegs[slot])
            except Mp4Error as exc:
                self._record_bad(info, b, "feed", f"bad video: {exc}")
                mapping[b] = -1
                continue
            for slot, jpeg in zip(per_frame, jpegs):
                slot[b] = TensorCPU(jpeg, "")
        if -1 in mapping:
            mapping = self._replacements(info, mapping)
        self._feed_inputs(plan_outputs, per_frame, mapping)
        return info, per_frame, mapping

    def _feed_inputs(self, plan_outputs, per_frame: list[list[TensorCPU]], mapping: list[int]) -> None:
        """Feed the samples ``mapping`` (indices into the plan's batch: the identity normally, a
        good sample's index in a bad one's slot, or a single sample when looking for a bad one)."""
        plan, draws = split_plan(plan_outputs, packed=self._state_version >= 2)
        identity = mapping == list(range(len(per_frame[0])))
        for j, jpegs in enumerate(per_frame):
            self._work.feed_input(f"jpeg{j}", jpegs if identity else [jpegs[m] for m in mapping])
        for name in ("wave1", "wave2"):
            batch = plan[name]
            self._work.feed_input(name, batch if identity else [batch[m] for m in mapping])
        self._feed_params(draws, mapping)
        if self._audio_union:
            self._feed_union(plan, mapping)

    def _feed_params(self, draws, mapping: list[int]) -> None:
        """Every augmentation argument of the fed samples (``RecordedDraws.evaluate``: the recorded
        arithmetic on the plan's draws and the frame sizes, numpy over the batch)."""
        if not self._draws.params:
            return
        packed = (draws.as_array() if hasattr(draws, "as_array") else np.asarray(draws))[mapping]
        sizes = {slot: size[mapping] for slot, size in self._frame_sizes.items()}
        for name, values in self._draws.evaluate(packed, sizes):
            self._work.feed_input(name, values)

    def _feed_union(self, plan: dict[str, Any], mapping: list[int]) -> None:
        """The shared-STFT inputs (``pipelines.union_inputs``) of the samples fed: the offset of view
        2's audio from view 1's comes from the planned start times, and is checked on the samples."""
        wave1, wave2 = plan["wave1"].as_array()[mapping], plan["wave2"].as_array()[mapping]
        times = plan["times"].as_array()[mapping]  # v1, a1, v2, a2 start seconds
        offsets = np.rint((times[:, 3] - times[:, 1]) * self.sample_rate).astype(np.int64)
        unions, shifts, shared = union_inputs(wave1, wave2, offsets, self.spec.mel.hop)
        for name, batch in zip(UNION_INPUTS, (unions, shifts, shared)):
            self._work.feed_input(name, batch)
        self._shared = int(shared.sum())

    # -- iteration
    def __len__(self) -> int:
        return self._batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        while self.epoch == epoch:  # one epoch per iteration, resuming mid-epoch if restored
            started = time.perf_counter()
            plan = self._pull_plan()
            self._timing["plan_s"] += time.perf_counter() - started
            work = self._run_work(plan)
            converted = time.perf_counter()
            batch = self._to_batch(plan, work)
            self._timing["to_batch_s"] += time.perf_counter() - converted
            self._timing["batches"] += 1
            self.batch_in_epoch += 1
            if self.batch_in_epoch == self._batches_per_epoch:
                self._finish_epoch()
            yield batch

    def _finish_epoch(self) -> None:
        # Pull (without decoding) the shard's remainder so the next epoch starts on its boundary.
        for _ in range(self._pulls_per_epoch - self._batches_per_epoch):
            self._pull_plan()
        self.epoch += 1
        self.batch_in_epoch = 0

    def _to_batch(self, plan, work) -> dict[str, Any]:
        named, _ = split_plan(plan, packed=self._state_version >= 2)
        mapping = self._mapping  # a bad sample's slot holds a good sample of the batch
        key_info = named["key"].as_array()[mapping]
        times = torch.from_numpy(named["times"].as_array()[mapping].copy())
        fallback = torch.from_numpy(named["fallback"].as_array()[mapping].astype(np.int32))
        speed = torch.from_numpy(named["speed"].as_array()[mapping].astype(np.float32))  # [B, 4]: v1, a1, v2, a2
        self._counts["samples"] += len(key_info)
        data_error = self._check_bound()
        self._counts["batches"] += 1
        self._counts["fallback_shrunk"] += int((fallback == FALLBACK_SHRUNK).sum())
        self._counts["fallback_padded"] += int((fallback == FALLBACK_PADDED).sum())
        self._counts["audio_shared"] += self._shared
        v1, v2, a1, a2 = (_to_torch(t, self.device) for t in work)
        return {"v1": v1, "v2": v2, "a1": a1, "a2": a2, "key": _keys_from_source_info(key_info), "times": times,
                "fallback": fallback, "speed": speed, "data_error": data_error}

    def _check_bound(self) -> str | None:
        """None, or (past data.max_bad_fraction) the error message; raised unless the trainer asked
        for it as a flag (``limit_action = "flag"``)."""
        if not self.bad_samples.exceeded(self._counts["samples"]):
            return None
        message = self.bad_samples.message(self._counts["samples"])
        if self.limit_action == "raise":
            raise BadSampleLimitError(message)
        return message

    # -- state
    def stats(self) -> dict[str, int]:
        """Counters since construction: samples, batches, short-clip fallbacks (views.py codes)."""
        return dict(self._counts, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch)

    def timing(self) -> dict[str, float]:
        """Seconds spent since construction, summed over batches, on the thread that iterates
        the loader: ``plan_s`` (plan pipeline run), ``feed_s`` (Python: JPEG slicing and
        ``feed_input`` calls, holding the GIL), ``work_s`` (work pipeline run: decoding and
        augmentation, GIL released), ``to_batch_s`` (copy into torch tensors and bookkeeping)."""
        return dict(self._timing)

    def _fingerprint(self) -> str:
        # the rates as the shards hold them, as a config stated them before they came from the shards
        config = dict(asdict(self.config), fps=float(self.fps), sample_rate=int(self.sample_rate))
        if not self.config.speed.enabled:  # states saved before data.speed existed stay resumable
            del config["speed"]
        if self.config.audio_frontend == "logmel":  # and so do states saved before data.audio_frontend
            del config["audio_frontend"]
        return json.dumps([config, self.batch_size, self.rank, self.world_size, self.seed], sort_keys=True, default=str)

    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded batch: restoring it continues with the next batch."""
        return {
            "version": self._state_version,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "plan_checkpoint": self._plan.checkpoint(),
            "counts": dict(self._counts),
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") not in STATE_VERSIONS:
            raise ValueError(f"loader state version {state.get('version')} is not one of {STATE_VERSIONS}")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError("loader state was saved with a different data config, batch size, rank, world size or seed")
        self._state_version = int(state["version"])
        self._plan = self._build_plan(checkpoint=state["plan_checkpoint"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._counts = {"bad_samples": 0, "audio_shared": 0, **state["counts"]}  # states before a counter existed: 0
        self.bad_samples.bad = self._counts["bad_samples"]  # the bound counts the whole run


def build_train_loader(
    data_cfg: dict,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> TrainLoader:
    """Training loader for one rank (``rank``/``world_size`` from torch.distributed); see module doc."""
    return TrainLoader(LoaderConfig.from_dict(data_cfg).require_shards(), batch_size=batch_size, rank=rank, world_size=world_size, device=device, seed=seed)


# ----------------------------------------------------------------------------- evaluation


def rank_part(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the samples (in shard order) that rank ``rank`` of ``world_size`` reads: DALI's
    reader sharding (``shard_id``/``num_shards``), the same split as the training loader's."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


_VIDEO_DECODERS: dict[tuple[int, str], str] = {}  # (GPU, first shard) -> "mixed" | "cpu", probed once per process


def choose_video_decoder(reader: ReaderSpec, device_id: int, probe=probe_gpu_video_decoder) -> str:
    """``mixed`` (NVDEC) when it decodes the reader's first shard on GPU ``device_id``, else ``cpu``
    (said once on stderr). The probe decodes one frame; its answer is kept for the process."""
    key = (device_id, reader.paths[0])
    if key not in _VIDEO_DECODERS:
        first = replace(reader, paths=reader.paths[:1], shard_id=0, num_shards=1, shuffle=False,
                                    index_paths=reader.index_paths[:1] if reader.index_paths else None)
        error = probe(first, device_id)
        if error:
            print(f"note: NVDEC does not decode these shards' video on GPU {device_id} ({error}); the evaluation "
                  "loader decodes video on the CPU and augments it on the GPU", file=sys.stderr)
        _VIDEO_DECODERS[key] = "cpu" if error else "mixed"
    return _VIDEO_DECODERS[key]


_SCREENS: dict[tuple, ScreenResult] = {}  # (shard files as stat'ed, indexes, modalities) -> screen, per process


class EvalLoader:
    """One rank's part of the dataset (all of it in a world of one), every sample of it exactly
    once, K clips each; labels from the manifest.

    Rank r of W reads the samples ``rank_part(N, r, W)`` of the shard order: the parts are disjoint
    and together cover the dataset, so W ranks decode it once between them. ``shuffle`` mixes the
    part's order in a buffer of ``shuffle_buffer`` samples, seeded (same seed, same order)."""

    def __init__(self, spec: EvalGraphSpec, shards: ShardSet, *, batch_size: int, device: str, seed: int, num_threads: int,
                 rank: int = 0, world_size: int = 1, shuffle: bool = False, shuffle_buffer: int = 256,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.spec, self.shards, self.batch_size = spec, shards, batch_size
        self.rank, self.world_size = rank, world_size
        self.device, dali_device, device_id = dali_placement(device)
        # every rank screens every sample, so that all ranks split the same good samples
        self._screen = self._screened(shards, spec, max_bad_fraction)
        self.skipped = [bad.to_dict() for bad in self._screen.bad]  # the evaluators put them in results.json
        reader = ReaderSpec(paths=self._screen.tars, index_paths=self._screen.indexes, shard_id=rank,
                            num_shards=world_size, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                            audio_format=shards.audio_format)

        # NVDEC where it takes the shards' MJPEG, else the CPU decoder feeding the GPU graph
        self.video_decoder = (choose_video_decoder(reader, device_id) if dali_device == "gpu" and spec.video
                              else "mixed" if dali_device == "gpu" else "cpu")

        def graph():
            return eval_graph(spec, reader, dali_device, self.video_decoder)

        try:
            self._pipe = build_pipeline(graph, device=dali_device, batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
        except RuntimeError as exc:
            raise ShardError(f"cannot open shards {list(shards.tars)}: {exc}") from exc
        self.total_samples = int(self._pipe.reader_meta(READER_NAME)["epoch_size"])
        start, end = rank_part(self.total_samples, rank, world_size)
        self.num_samples = end - start  # this rank's; the reader pads its last batch with repeats
        if self.num_samples == 0:
            raise ValueError(f"{self.total_samples} samples cannot be split over {world_size} ranks (rank {rank} gets none)")

    @staticmethod
    def _screened(shards: ShardSet, spec: EvalGraphSpec, max_bad_fraction: float) -> ScreenResult:
        """The samples that pass ``screen.py``'s checks; past ``max_bad_fraction`` of the dataset
        (0: any), ``BadSampleLimitError`` naming the skipped keys, shards and reasons."""
        if shards.indexes is None:  # no DALI index to filter: nothing screened (the writer always writes one)
            return ScreenResult(shards.tars, shards.indexes, -1)
        audio_format = shards.audio_format if spec.audio else None
        files = tuple((path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in shards.tars)
        cache_key = (files, shards.indexes, spec.video, audio_format)
        if cache_key not in _SCREENS:  # an evaluator's passes (train, test, FC epochs) screen once
            _SCREENS[cache_key] = screen_shards(shards.tars, shards.indexes, video=spec.video, audio_format=audio_format)
        result = _SCREENS[cache_key]
        total = result.samples + len(result.bad)
        if len(result.bad) > max_bad_fraction * total or not result.tars:
            keys = [bad.key for bad in result.bad[:20]]
            reasons = sorted({bad.reason for bad in result.bad})[:5]
            raise BadSampleLimitError(
                f"{len(result.bad)} of {total} samples fail the evaluation loader's screen, more than "
                f"loader.max_bad_fraction={max_bad_fraction:g} allows; keys {keys} in shards "
                f"{sorted({bad.shard for bad in result.bad})} ({'; '.join(reasons)}). Check the shards with "
                "`crisscross shards verify`, or raise loader.max_bad_fraction (the skipped keys are then listed "
                "in results.json)")
        return result

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        remaining = self.num_samples
        for _ in range(len(self)):
            try:
                outputs = self._pipe.run()
            except RuntimeError as exc:
                raise ShardError(f"reading shards {list(self.shards.tars)} failed: {exc}") from exc
            valid = min(remaining, self.batch_size)  # the last batch is padded by the reader
            remaining -= valid
            yield self._to_batch(outputs, valid)

    def _to_batch(self, outputs, valid: int) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        position = 0
        for name, enabled in (("video", self.spec.video), ("audio", self.spec.audio)):
            if enabled:
                batch[name] = _to_torch(outputs[position], self.device)[:valid]
                position += 1
        keys = _keys_from_source_info(outputs[position].as_array())[:valid]
        rows = [self.shards.manifest.get(k, {}) for k in keys]
        batch["key"] = keys
        batch["label"] = [r.get("label") for r in rows]
        batch["label_index"] = torch.tensor([int(r.get("label_index", -1) if r.get("label_index") is not None else -1) for r in rows], dtype=torch.long)
        return batch


def build_eval_loader(
    shards_dir: str | os.PathLike,
    *,
    view: ViewSpec | None = None,
    clips_per_sample: int = 10,
    sampling: str = "uniform",
    augment: str = "none",
    modalities: tuple[str, ...] = ("video", "audio"),
    batch_size: int = 8,
    device: str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    shuffle_buffer: int = 256,
    num_threads: int = 2,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    fps: float | None = None,
    sample_rate: int | None = None,
    **view_fields: Any,
) -> EvalLoader:
    """Evaluation loader: yields ``{"video": [B,K,3,T,crop,crop], "audio": [B,K,1,n_mels,F], "key",
    "label", "label_index"}`` (a modality absent when not requested). ``view``: the clips' window,
    crop and front end (a ``ViewSpec``; or its fields as keyword arguments, ``frames=8, crop=112``);
    ``augment="linear"`` applies the linear-evaluation augmentations (Tables S3/S4: no blur; audio
    with time warp). ``fps`` / ``sample_rate``: rates the encoder was trained at, checked against
    the shards' own (which the loader uses). Rank ``rank`` of ``world_size`` reads its own 1/W of
    the samples (``rank_part``). Samples failing ``screen.py``'s payload checks are skipped and
    listed in the loader's ``skipped`` (up to ``max_bad_fraction`` of the dataset, else
    ``BadSampleLimitError``); ``device`` goes through ``crisscross.train.distributed.resolve_device``
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    unknown = set(modalities) - {"video", "audio"}
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of ('video', 'audio'), got {modalities}")
    if view is not None and view_fields:
        raise TypeError(f"give a view or its fields, not both ({sorted(view_fields)})")
    view = (view or ViewSpec(**view_fields)).with_augment(augment)
    shards = find_shards(shards_dir)
    shards.check_rates(fps, sample_rate)  # a stated rate (the encoder's training input) must be the shards'
    spec = eval_graph_spec(view, shards.dataset.fps, shards.dataset.sample_rate, clips=clips_per_sample,
                           sampling=sampling, modalities=tuple(modalities))
    return EvalLoader(spec, shards, batch_size=batch_size, device=device, seed=seed, num_threads=num_threads,
                      rank=rank, world_size=world_size, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                      max_bad_fraction=max_bad_fraction)
