"""Plan a build: sources -> sample specs (clips) -> a seeded cross-shard shuffle -> shard tasks.

The plan is a pure function of the input and the build parameters. It is saved as
``_plan.json`` in the output folder, so every worker, job-array task and rerun uses the same one;
shard j of the plan is task j.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crisscross.preprocess import media
from crisscross.preprocess.sources import SourceItem, load_sources
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
        if self.clip_seconds is not None and self.clip_seconds <= 0:
            raise ValueError("clip_seconds must be positive")


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


def clip_spans(item: SourceItem, clip_seconds: float | None, min_seconds: float) -> list[tuple[float, float | None]]:
    start = item.start or 0.0
    if clip_seconds is None:
        return [(start, item.end)]
    end = item.end
    if end is None:
        try:
            end = media.probe(item.path)["duration"]
        except media.MediaError:
            end = None
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
    specs = []
    for item in items:
        for i, (start, end) in enumerate(clip_spans(item, cfg.clip_seconds, cfg.min_seconds)):
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


def make_plan(input_path: str | Path, cfg: BuildConfig) -> dict:
    items = load_sources(input_path, cfg.adapter, split=cfg.split, video_root=cfg.video_root)
    specs = plan_samples(items, cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(specs))  # the cross-shard shuffle
    per_shard = samples_per_shard(specs, cfg)
    shuffled = [specs[i] for i in order]
    shards = [shuffled[i:i + per_shard] for i in range(0, len(shuffled), per_shard)]
    labels = sorted({s.item.label for s in specs if s.item.label is not None})
    item_number = {item.source_id: i for i, item in enumerate(items)}
    return {
        "format_version": fmt.FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "input": str(Path(input_path).resolve()),
        "labels": labels,
        "sources": len(items),
        # items once; a sample is [item number, clip index, start, end, key] (compact for big inputs)
        "items": [dataclasses.asdict(item) for item in items],
        "shards": [[_spec_to_json(s, item_number) for s in shard] for shard in shards],
    }


def _spec_to_json(spec: SampleSpec, item_number: dict[str, int]) -> list:
    return [item_number[spec.item.source_id], spec.clip_index, spec.start, spec.end, spec.key]


def specs_of_shard(plan: dict, shard: int) -> list[SampleSpec]:
    specs = []
    for item_no, clip_index, start, end, key in plan["shards"][shard]:
        specs.append(SampleSpec(key, SourceItem(**plan["items"][item_no]), clip_index, start, end))
    return specs


def write_json_atomic(path: Path, obj, indent: int | None = 1) -> None:
    # allow_nan=False: a NaN/inf that slipped through validation fails here, never lands in a file
    atomic_write(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")


def load_or_make_plan(input_path: str | Path, out_dir: Path, cfg: BuildConfig) -> dict:
    """The plan is a pure function of (input, cfg); it is saved so every task and every rerun
    uses the same one. A saved plan for different parameters is an error, not overwritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLAN_FILE
    if path.exists():
        plan = json.loads(path.read_text())
        if plan["config"] != json.loads(json.dumps(dataclasses.asdict(cfg))) or plan["input"] != str(Path(input_path).resolve()):
            raise ValueError(f"{out_dir} holds a build with other parameters or input; use a new --out")
        return plan
    plan = make_plan(input_path, cfg)
    write_json_atomic(path, plan, indent=None)
    return plan

