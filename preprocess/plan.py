"""Plan a build: sources -> sample specs (clips) -> a seeded cross-shard shuffle -> shard tasks.

The plan is a pure function of the input and the build parameters. It is saved as
``_plan.json`` in the output folder, so every worker, job-array task and rerun uses the same one;
shard j of the plan is task j.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crisscross.preprocess import media
from crisscross.preprocess.processes import time_limit
from crisscross.preprocess.sources import MAX_SPAN_SECONDS, SourceItem, bad_name, invalid_item, load_sources
from crisscross.shards import format as fmt
from crisscross.shards.atomic import atomic_write

PLAN_FILE = "_plan.json"
REQUIRE_CHOICES = ("any", "av", "video", "audio")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the dataset's bytes (saved in dataset.json)."""

    name: str = "data"
    fps: int = fmt.DEFAULT_FPS
    short_side: int = fmt.DEFAULT_SHORT_SIDE
    sample_rate: int = fmt.DEFAULT_SAMPLE_RATE
    clip_seconds: float | None = None  # cut sources into clips of this length
    min_seconds: float = 1.0  # a sample shorter than this is rejected as too_short
    shard_size_bytes: int = 1_000_000_000  # target (~1 GB); shards hold a fixed sample count estimated from it
    samples_per_shard: int | None = None  # overrides the estimate
    seed: int = 0
    audio_format: str = "pcm"
    require: str = "any"  # which modalities a kept sample must have: any | av | video | audio
    jpeg_qscale: int = 3
    adapter: str = "auto"
    split: int = 1  # UCF101/HMDB51 official split number
    video_root: str | None = None  # Kinetics: where the videos are (default: the CSV's folder)
    item_timeout_s: float = 600.0  # per source; a decoder that hangs becomes a 'timeout' error

    def media_config(self) -> media.MediaConfig:
        return media.MediaConfig(fps=self.fps, short_side=self.short_side, sample_rate=self.sample_rate,
                                 jpeg_qscale=self.jpeg_qscale, audio_format=self.audio_format)

    def validate(self) -> None:
        if self.require not in REQUIRE_CHOICES:
            raise ValueError(f"require must be one of {REQUIRE_CHOICES}")
        if self.audio_format not in ("pcm", "flac"):
            raise ValueError("audio_format must be pcm or flac")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ValueError(f"dataset name {self.name!r}: use letters, digits, underscore")
        ranges = {"fps": (1, 240), "short_side": (16, 4096), "sample_rate": (1000, 384_000), "jpeg_qscale": (2, 31),
                  "split": (1, 3), "min_seconds": (0.0, media.DECODE_WINDOW_S),
                  "item_timeout_s": (0.0, 7 * 24 * 3600.0), "shard_size_bytes": (1, 1 << 50)}
        if self.clip_seconds is not None:
            ranges["clip_seconds"] = (1e-3, media.DECODE_WINDOW_S)  # a sample may last DECODE_WINDOW_S at most
        if self.samples_per_shard is not None:
            ranges["samples_per_shard"] = (1, 1 << 31)
        for key, (low, high) in ranges.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}")


@dataclass
class SampleSpec:
    key: str
    item: SourceItem
    clip_index: int
    start: float  # span on the source timeline
    end: float | None


def _slug(text: str) -> str:
    stem = Path(text.split("#")[0]).stem
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem.encode("ascii", "ignore").decode()).strip("_")[:40] or "x"


def sample_key(item: SourceItem, clip_index: int) -> str:
    """Readable, unique and dot-free: ``<ascii stem>_<sha1(source_id)[:10]>_<clip>``."""
    digest = hashlib.sha1(item.source_id.encode("utf-8")).hexdigest()[:10]
    return f"{_slug(item.source_id)}_{digest}_{clip_index:04d}"


# a real media file spends at least this many bytes per second of its duration (the leanest
# audio codecs use ~750 B/s); a header claiming more seconds than size / this is a duration bomb
MIN_BYTES_PER_SECOND = 8.0
PROBE_TIMEOUT_S = 30.0  # a header probe during planning (the parent process) is cut off after this


def claimed_duration(item: SourceItem) -> float | None:
    """The source's duration from its header, bounded: None when unknown or unreadable (the
    decoder then reports what is wrong); MediaError('absurd_duration') when the header claims
    more than the file could hold. Never raises anything else: planning runs in the parent."""
    try:
        size = os.path.getsize(item.path)
        with time_limit(PROBE_TIMEOUT_S):
            duration = media.probe(item.path)["duration"]
    except Exception:  # noqa: BLE001 - missing, unreadable, hostile header, timeout: the decoder's turn
        return None
    if duration is None:
        return None
    limit = min(MAX_SPAN_SECONDS, size / MIN_BYTES_PER_SECOND)
    if not math.isfinite(duration) or not 0 <= duration <= limit:
        raise media.MediaError("absurd_duration", f"header claims {duration!r} s for a {size}-byte file "
                               f"(at most {limit:.0f} s plausible)")
    return duration


def clip_spans(item: SourceItem, clip_seconds: float | None, min_seconds: float) -> list[tuple[float, float | None]]:
    """The spans of one item; raises MediaError for an item that cannot be planned (a row)."""
    start = item.start or 0.0
    if clip_seconds is None:
        return [(start, item.end)]
    end = item.end if item.end is not None else claimed_duration(item)
    if end is None:  # unreadable or unknown length: one span, the decoder reports what is wrong
        return [(start, None)]
    spans, t = [], start
    while t + clip_seconds <= end + 1e-9:
        spans.append((t, t + clip_seconds))
        t += clip_seconds
    if end - t >= min_seconds or not spans:  # keep a tail that is still long enough as its own clip
        spans.append((t, end))
    return spans


def _estimated_bytes(cfg: BuildConfig, seconds: float) -> float:
    # measured at q=3: ~0.2 bytes per pixel of MJPEG at 16:9; audio 2 bytes per sample
    video = 0.2 * cfg.short_side * cfg.short_side * 16 / 9 * cfg.fps
    return seconds * (video + 2 * cfg.sample_rate) + 4096


def plan_samples(items: list[SourceItem], cfg: BuildConfig) -> list[SampleSpec]:
    """Sample specs of ``items``; an item that cannot be planned is replaced in ``items`` by
    its invalid form (one spec, an error row at build time)."""
    specs = []
    for n, item in enumerate(items):
        spans: list[tuple[float, float | None]] = [(0.0, None)]
        shown = bad_name(item.path)
        if shown is not None and not item.invalid_reason:  # any adapter: a path JSON cannot hold as is
            item = items[n] = invalid_item(dataclasses.replace(item, path=shown, source_id=bad_name(item.source_id)
                                                               or item.source_id), "bad_filename",
                                           f"file name is not UTF-8: {shown}")
        if not item.invalid_reason:
            try:
                spans = clip_spans(item, cfg.clip_seconds, cfg.min_seconds)
            except media.MediaError as exc:
                item = items[n] = invalid_item(item, exc.reason, exc.detail)
        for i, (start, end) in enumerate(spans):
            specs.append(SampleSpec(sample_key(item, i), item, i, start, end))
    keys = Counter(s.key for s in specs)
    dupes = [k for k, n in keys.items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate sources in the input (same source_id): {dupes[:5]}")
    return specs


def samples_per_shard(specs: list[SampleSpec], cfg: BuildConfig) -> int:
    if cfg.samples_per_shard:
        return cfg.samples_per_shard
    spans = [(s.end - s.start) for s in specs if s.end is not None]
    typical = float(np.median(spans)) if spans else 10.0  # unknown lengths: assume 10 s clips
    return max(1, int(cfg.shard_size_bytes // _estimated_bytes(cfg, typical)))


@dataclass
class BuildPlan:
    """The saved plan (``_plan.json``): the build's parameters, its input, and the shard tasks.

    ``items`` holds each source item once (as its JSON row); a sample of ``shards[j]`` is
    ``[item number, clip index, start, end, key]`` (compact for inputs of millions of clips).
    """

    config: BuildConfig
    input: str  # the input path, resolved
    labels: list[str]  # sorted; a sample's label_index is its label's position here
    sources: int
    items: list[dict[str, Any]]
    shards: list[list[list[Any]]]
    format_version: int = fmt.FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def shard_size(self, shard: int) -> int:
        return len(self.shards[shard])

    def specs(self, shard: int) -> list[SampleSpec]:
        """The sample specs of shard ``shard``, in the plan's (shuffled) order."""
        return [SampleSpec(key, SourceItem(**self.items[item_no]), clip_index, start, end)
                for item_no, clip_index, start, end, key in self.shards[shard]]

    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "config": dataclasses.asdict(self.config),
                "input": self.input, "labels": self.labels, "sources": self.sources, "items": self.items,
                "shards": self.shards}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | str = PLAN_FILE) -> BuildPlan:
        """A plan read back. One whose parameters are not exactly this version's BuildConfig fields
        is a build with other parameters (it cannot be continued, only redone elsewhere)."""
        known = {f.name for f in dataclasses.fields(BuildConfig)}
        if not isinstance(data.get("config"), dict) or set(data["config"]) != known:
            raise ValueError(f"{Path(path).parent} holds a build with other parameters or input; use a new --out")
        try:
            config = BuildConfig(**data["config"])
            return cls(config=config, input=data["input"], labels=data["labels"], sources=data["sources"],
                       items=data["items"], shards=data["shards"],
                       format_version=data.get("format_version", fmt.FORMAT_VERSION))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: a build plan of another version ({type(exc).__name__}: {exc}); "
                             "use a new --out") from None

    def made_for(self, input_path: str | Path, cfg: BuildConfig) -> bool:
        """Whether this plan is the one ``(input_path, cfg)`` gives (compared as saved, in JSON)."""
        as_saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
        return as_saved == json.loads(json.dumps(dataclasses.asdict(self.config))) and \
            self.input == str(Path(input_path).resolve())


def read_plan(out_dir: str | Path) -> BuildPlan:
    """The saved plan of the build in ``out_dir`` (ValueError for a damaged file)."""
    path = Path(out_dir) / PLAN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged build plan ({exc}); use a new --out") from None
    return BuildPlan.from_json(data, path)


def make_plan(input_path: str | Path, cfg: BuildConfig) -> BuildPlan:
    items = load_sources(input_path, cfg.adapter, split=cfg.split, video_root=cfg.video_root)
    if not items:
        raise ValueError(f"no media found in {input_path} (adapter {cfg.adapter!r}); nothing to build")
    specs = plan_samples(items, cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(specs))  # the cross-shard shuffle
    per_shard = samples_per_shard(specs, cfg)
    shuffled = [specs[i] for i in order]
    shards = [shuffled[i:i + per_shard] for i in range(0, len(shuffled), per_shard)]
    labels = sorted({s.item.label for s in specs if s.item.label is not None})
    item_number = {item.source_id: i for i, item in enumerate(items)}
    return BuildPlan(config=cfg, input=str(Path(input_path).resolve()), labels=labels, sources=len(items),
                     items=[dataclasses.asdict(item) for item in items],
                     shards=[[_spec_to_json(s, item_number) for s in shard] for shard in shards])


def _spec_to_json(spec: SampleSpec, item_number: dict[str, int]) -> list:
    return [item_number[spec.item.source_id], spec.clip_index, spec.start, spec.end, spec.key]


def write_json_atomic(path: Path, obj, indent: int | None = 1) -> None:
    # allow_nan=False: a NaN/inf that slipped through validation fails here, never lands in a file
    atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")


# what a build writes into its output folder (and the temporaries of those files)
_OUTPUT_NAMES = {PLAN_FILE, "_parts", "manifest.parquet", "errors.parquet", "dataset.json"}


def _is_build_output(name: str, cfg: BuildConfig) -> bool:
    if name.startswith(".") and ".tmp-" in name:
        name = name[1:name.index(".tmp-")]  # .<target>.tmp-<random>: shards/atomic.py
    return name in _OUTPUT_NAMES or re.fullmatch(rf"{re.escape(cfg.name)}-\d{{6}}\.(tar|idx)", name) is not None


def check_out_dir(input_path: str | Path, out_dir: Path, cfg: BuildConfig) -> None:
    """Refuse an output folder a build could clobber or mix into: inside the input (or the input
    itself), not a folder, or holding anything that is not this build's own files."""
    inp, out = Path(input_path).resolve(), out_dir.resolve()
    if not inp.exists():
        raise FileNotFoundError(f"input {input_path} does not exist")
    if inp.is_dir() and (out == inp or inp in out.parents):
        raise ValueError(f"--out {out_dir} is inside the input folder {input_path}; write the shards elsewhere")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not _is_build_output(p.name, cfg))
        if foreign:
            raise ValueError(f"--out {out_dir} is not empty and not a shard build of dataset {cfg.name!r} "
                             f"(holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                             "use a new or empty folder")


def load_or_make_plan(input_path: str | Path, out_dir: Path, cfg: BuildConfig) -> BuildPlan:
    """The plan is a pure function of (input, cfg); it is saved so every task and every rerun
    uses the same one. A saved plan for different parameters is an error, not overwritten.
    Nothing is created before the plan exists (a wrong input leaves no empty folder behind)."""
    check_out_dir(input_path, out_dir, cfg)
    if (out_dir / PLAN_FILE).exists():
        plan = read_plan(out_dir)
        if not plan.made_for(input_path, cfg):
            raise ValueError(f"{out_dir} holds a build with other parameters or input; use a new --out")
        return plan
    plan = make_plan(input_path, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / PLAN_FILE, plan.to_json(), indent=None)
    return plan
