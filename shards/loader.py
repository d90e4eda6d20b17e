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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from nvidia.dali.backend import TensorCPU
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

from crisscross.config import Strict
from crisscross.errors import UserError
from crisscross.shards.augment import AudioAugment, AugmentConfig, LogMel, RecordedDraws, VideoAugment
from crisscross.shards.mjpeg_frames import FrameTables, Mp4Error, jpeg_frames
from crisscross.shards.pipelines import (
    AUDIO_EXTS,
    PLAN_DATA,
    PLAN_META,
    READER_NAME,
    EvalGraphSpec,
    ReaderSpec,
    TrainGraphSpec,
    build_pipeline,
    eval_graph,
    plan_graph,
    probe_gpu_video_decoder,
    work_graph,
)
from crisscross.shards.views import FALLBACK_PADDED, FALLBACK_SHRUNK, RELAXATION_MODES, VIEW_ALIGNMENTS, ViewGeometry

STATE_VERSION = 1


class ShardError(UserError, RuntimeError):
    """A shard cannot be read (missing, truncated, corrupt); the message names it. A UserError:
    the command line reports it in one line (exit code 2)."""


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
    fps: float = 16.0  # shard frame rate (the builder's default)
    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 160
    logmel_mean: float = LogMel.mean
    logmel_std: float = LogMel.std
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_threads: int = 2
    shuffle: bool = True
    shuffle_buffer: int = 256
    prefetch: int = 2
    missing_components: str = "skip"  # skip: samples lacking video or audio are dropped; or error

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.relaxation not in RELAXATION_MODES:
            raise ValueError(f"data.relaxation must be one of {RELAXATION_MODES}, not {self.relaxation!r}")
        if self.view_alignment not in VIEW_ALIGNMENTS:
            raise ValueError(f"data.view_alignment must be one of {VIEW_ALIGNMENTS}, not {self.view_alignment!r}")
        if self.missing_components not in ("skip", "error"):
            raise ValueError("data.missing_components must be 'skip' or 'error'")
        if self.frames < 1 or self.crop < 1 or self.audio_seconds * self.sample_rate < self.hop:
            raise ValueError("data.frames, data.crop and data.audio_seconds must be positive (audio at least one hop)")
        # DALI takes int32 arguments: a 2^31 shuffle buffer would crash it without a message
        for key, (low, high) in {"shuffle_buffer": (1, 2**31 - 1), "prefetch": (0, 1024), "num_threads": (1, 4096),
                                 "frame_stride": (1, 4096), "n_mels": (1, 4096), "n_fft": (1, 1 << 20),
                                 "hop": (1, 1 << 20)}.items():
            value = getattr(self, key)
            if not low <= value <= high:
                raise ValueError(f"data.{key} must be a number in [{low}, {high}], got {value!r}")

    def require_shards(self) -> "LoaderConfig":
        if not self.shards:
            raise ValueError("data config: 'shards' (the dataset directory) is required")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def geometry(self) -> ViewGeometry:
        return ViewGeometry(self.frames, self.frame_stride, self.audio_seconds, self.fps, self.sample_rate)

    def mel(self) -> LogMel:
        return LogMel(self.sample_rate, self.n_fft, self.hop, self.n_mels, mean=self.logmel_mean, std=self.logmel_std)

    def graph_spec(self) -> TrainGraphSpec:
        return TrainGraphSpec(
            geometry=self.geometry(),
            crop=self.crop,
            relaxation=self.relaxation,
            extreme_gap=self.extreme_gap,
            view_alignment=self.view_alignment,
            video_aug=self.augment.video,
            audio_aug=self.augment.audio,
            mel=self.mel(),
        )


# ----------------------------------------------------------------------------- dataset files


@dataclass(frozen=True)
class ShardSet:
    tars: tuple[str, ...]
    indexes: tuple[str, ...] | None
    manifest: dict[str, dict[str, Any]]  # key -> manifest row (empty when there is no manifest)
    build: dict[str, Any] = field(default_factory=dict)  # dataset.json "build" parameters, if any

    def check_rates(self, fps: float, sample_rate: int) -> None:
        """The view durations assume the shards' rates: refuse a mismatch instead of mis-timing."""
        built_fps, built_rate = self.build.get("fps", fps), self.build.get("sample_rate", sample_rate)
        if float(built_fps) != float(fps) or int(built_rate) != int(sample_rate):
            raise ValueError(f"shards were built at {built_fps} fps / {built_rate} Hz but the loader is set to "
                             f"{fps} fps / {sample_rate} Hz: set data.fps / data.sample_rate to match")
        if self.audio_format not in AUDIO_EXTS:
            raise ValueError(f"the loader reads audio as {sorted(AUDIO_EXTS)}; these shards hold {self.audio_format!r}")

    @property
    def audio_format(self) -> str:
        """pcm or flac (``--audio-format`` of the build); the DALI graphs read either."""
        return str(self.build.get("audio_format", "pcm"))


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


def _read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / "manifest.parquet"
    if not path.exists():
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {row["key"]: row for row in table.to_pylist()}


def find_shards(directory: str | os.PathLike) -> ShardSet:
    """All ``*.tar`` shards of a dataset directory (sorted), their ``.idx`` files and the manifest."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    dataset_json = root / "dataset.json"
    try:
        dataset = json.loads(dataset_json.read_text(encoding="utf-8")) if dataset_json.exists() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{dataset_json}: not valid JSON ({exc}); rerun `crisscross shards merge`") from None
    if not isinstance(dataset, dict):
        raise ShardError(f"{dataset_json}: not a dataset.json")
    if dataset.get("shards"):  # the builder's own list: never a half-written leftover
        tars = [root / name for name in dataset["shards"]]
    else:
        tars = sorted(p for p in root.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"no *.tar shards in {root}")
    idx = [t.with_suffix(".idx") for t in tars]
    have_idx = all(p.exists() for p in idx)
    for tar, index in zip(tars, idx):
        _check_shard(tar, index if have_idx else None)
    return ShardSet(tuple(map(str, tars)), tuple(map(str, idx)) if have_idx else None, _read_manifest(root),
                    dict(dataset.get("build", {})))


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
    """Copy a dense DALI batch into a new torch tensor on ``device`` (DALI's PyTorch plugin)."""
    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, out, cuda_stream=stream)
    return out


# ----------------------------------------------------------------------------- training


class TrainLoader:
    """One rank's training batches; iterate once per epoch. ``len()`` = batches per epoch (equal on
    every rank: ``floor(floor(N / world_size) / batch_size)``; the rest of a shard is dropped)."""

    def __init__(self, config: LoaderConfig, *, batch_size: int, rank: int, world_size: int, device: str, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.config, self.batch_size, self.rank, self.world_size, self.seed = config, batch_size, rank, world_size, seed
        self.device = torch.device(device)
        self._dali_device = "gpu" if self.device.type == "cuda" else "cpu"
        self._device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if self._dali_device == "gpu" else None
        self.shards = find_shards(config.shards)
        self.shards.check_rates(config.fps, config.sample_rate)
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
        self.spec = config.graph_spec()
        self._draws = RecordedDraws()
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
        self._counts = {"samples": 0, "batches": 0, "fallback_shrunk": 0, "fallback_padded": 0}
        self._timing = {"batches": 0, "plan_s": 0.0, "feed_s": 0.0, "work_s": 0.0, "to_batch_s": 0.0}

    # -- pipelines
    def _build_work(self):
        def graph():
            return work_graph(self.spec, self._draws, self._dali_device)

        return build_pipeline(graph, device=self._dali_device, batch_size=self.batch_size, num_threads=self.config.num_threads,
                              device_id=self._device_id, seed=self.seed + 7919 * (self.rank + 1), prefetch=1)

    def _build_plan(self, checkpoint: str | None):
        def graph():
            return plan_graph(self.spec, self.reader_spec, self._draws.specs)

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
        info, fed_jpegs = self._feed_work(plan_outputs)  # fed_jpegs: kept alive until the run is done
        fed = time.perf_counter()
        try:
            outputs = self._work.run()
        except RuntimeError as exc:
            keys = _keys_from_source_info(info)
            raise ShardError(f"decoding samples {keys} from shard(s) {_shards_of(info)} failed: {exc}") from exc
        self._timing["feed_s"] += fed - started
        self._timing["work_s"] += time.perf_counter() - fed
        del fed_jpegs
        return outputs

    def _feed_work(self, plan_outputs) -> tuple[np.ndarray, list[list[TensorCPU]]]:
        """Hand the plan's batch to the work pipeline's external sources; returns the key info
        and the fed JPEG tensors. The only per-sample Python: slicing the planned JPEG frames out
        of each (memory-mapped) MP4 (mjpeg_frames.py: one vectorised table lookup per sample, one
        slice per frame). Each slice is wrapped in a DALI ``TensorCPU`` here (zero-copy):
        ``feed_input`` then skips its per-element type probing, which cost more than the
        slicing itself (measured: docs/scaling.md, "The loader's feeding thread")."""
        video, frame_ids, wave1, wave2 = plan_outputs[: len(PLAN_DATA)]
        info = plan_outputs[len(PLAN_DATA)].as_array()
        frame_ids = frame_ids.as_array()
        per_frame: list[list[TensorCPU]] = [[None] * len(info) for _ in range(frame_ids.shape[1])]  # type: ignore[list-item]
        for b, row in enumerate(info):
            source = row.tobytes().rstrip(b"\0").decode("utf-8", "replace")
            data = np.asarray(video[b])  # zero-copy view
            try:
                jpegs = jpeg_frames(data, self._frame_tables.get(source, data), frame_ids[b])
            except Mp4Error as exc:
                key = _keys_from_source_info(info[b : b + 1])[0]
                raise ShardError(f"sample {key} of shard {source.rsplit(':', 2)[0]}: bad video: {exc}") from exc
            for slot, jpeg in zip(per_frame, jpegs):
                slot[b] = TensorCPU(jpeg, "")
        for j, jpegs in enumerate(per_frame):
            self._work.feed_input(f"jpeg{j}", jpegs)
        self._work.feed_input("wave1", wave1)
        self._work.feed_input("wave2", wave2)
        draws = plan_outputs[len(PLAN_DATA) + len(PLAN_META) :]
        for name, batch in zip(self._draws.names(), draws):
            self._work.feed_input(name, batch)
        return info, per_frame

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
        key_info = plan[len(PLAN_DATA)].as_array()
        times = torch.from_numpy(plan[len(PLAN_DATA) + 1].as_array().copy())
        fallback = torch.from_numpy(plan[len(PLAN_DATA) + 2].as_array().astype(np.int32))
        self._counts["samples"] += len(key_info)
        self._counts["batches"] += 1
        self._counts["fallback_shrunk"] += int((fallback == FALLBACK_SHRUNK).sum())
        self._counts["fallback_padded"] += int((fallback == FALLBACK_PADDED).sum())
        v1, v2, a1, a2 = (_to_torch(t, self.device) for t in work)
        return {"v1": v1, "v2": v2, "a1": a1, "a2": a2, "key": _keys_from_source_info(key_info), "times": times, "fallback": fallback}

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
        return json.dumps([asdict(self.config), self.batch_size, self.rank, self.world_size, self.seed], sort_keys=True, default=str)

    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded batch: restoring it continues with the next batch."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "plan_checkpoint": self._plan.checkpoint(),
            "counts": dict(self._counts),
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError("loader state was saved with a different data config, batch size, rank, world size or seed")
        self._plan = self._build_plan(checkpoint=state["plan_checkpoint"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._counts = dict(state["counts"])


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


class EvalLoader:
    """One rank's part of the dataset (all of it in a world of one), every sample of it exactly
    once, K clips each; labels from the manifest.

    Rank r of W reads the samples ``rank_part(N, r, W)`` of the shard order: the parts are disjoint
    and together cover the dataset, so W ranks decode it once between them. ``shuffle`` mixes the
    part's order in a buffer of ``shuffle_buffer`` samples, seeded (same seed, same order)."""

    def __init__(self, spec: EvalGraphSpec, shards: ShardSet, *, batch_size: int, device: str, seed: int, num_threads: int,
                 rank: int = 0, world_size: int = 1, shuffle: bool = False, shuffle_buffer: int = 256):
        from crisscross.train.distributed import resolve_device

        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.spec, self.shards, self.batch_size = spec, shards, batch_size
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(device)  # cuda -> this process's GPU (LOCAL_RANK), never a guessed cuda:0
        dali_device = "gpu" if self.device.type == "cuda" else "cpu"
        device_id = self.device.index if dali_device == "gpu" else None
        reader = ReaderSpec(paths=shards.tars, index_paths=shards.indexes, shard_id=rank, num_shards=world_size,
                            shuffle=shuffle, shuffle_buffer=shuffle_buffer, audio_format=shards.audio_format)

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
    clips_per_sample: int = 10,
    sampling: str = "uniform",
    frames: int = 8,
    crop: int = 112,
    audio_seconds: float = 2.0,
    augment: str = "none",
    modalities: tuple[str, ...] = ("video", "audio"),
    batch_size: int = 8,
    device: str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    shuffle_buffer: int = 256,
    frame_stride: int = 1,
    num_threads: int = 2,
    fps: float = 16.0,
    sample_rate: int = 16000,
    n_mels: int = 80,
    n_fft: int = 1024,
    hop: int = 160,
    logmel_mean: float = LogMel.mean,
    logmel_std: float = LogMel.std,
) -> EvalLoader:
    """Evaluation loader: yields ``{"video": [B,K,3,T,crop,crop], "audio": [B,K,1,n_mels,F], "key",
    "label", "label_index"}`` (a modality absent when not requested). ``augment="linear"`` applies
    the linear-evaluation augmentations (Tables S3/S4: no blur; audio with time warp). Rank ``rank``
    of ``world_size`` reads its own 1/W of the samples (``rank_part``); ``device`` goes through
    ``crisscross.train.distributed.resolve_device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    unknown = set(modalities) - {"video", "audio"}
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of ('video', 'audio'), got {modalities}")
    if augment == "none":
        video_aug, audio_aug = VideoAugment.disabled(), AudioAugment.disabled()
    elif augment == "linear":
        video_aug, audio_aug = VideoAugment(blur=False), AudioAugment(time_warp=True)
    else:
        raise ValueError(f"augment must be 'none' or 'linear', not {augment!r}")
    spec = EvalGraphSpec(
        clips=clips_per_sample,
        sampling=sampling,
        geometry=ViewGeometry(frames, frame_stride, audio_seconds, fps, sample_rate),
        crop=crop,
        video="video" in modalities,
        audio="audio" in modalities,
        video_aug=video_aug,
        audio_aug=audio_aug,
        mel=LogMel(sample_rate, n_fft, hop, n_mels, mean=logmel_mean, std=logmel_std),
    )
    shards = find_shards(shards_dir)
    shards.check_rates(fps, sample_rate)
    return EvalLoader(spec, shards, batch_size=batch_size, device=device, seed=seed, num_threads=num_threads,
                      rank=rank, world_size=world_size, shuffle=shuffle, shuffle_buffer=shuffle_buffer)

