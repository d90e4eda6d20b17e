"""Plan a dataset into deterministic shard tasks, write shards resumably, merge the dataset files.

Flow (every step deterministic given the inputs and the build parameters):

1. ``plan``: adapter items -> sample specs (one per item, or one per ``--clip-seconds`` clip,
   which needs each source's duration from a header probe) -> shuffled with ``seed`` ->
   consecutive groups of ``samples_per_shard``: shard j is task j. Saved as ``_plan.json``.
2. ``write_shard(j)``: decodes its samples (per-source try/except and a time limit: a bad file
   becomes an error row, never a dead worker), writes ``{name}-{j:06d}.tar`` + ``.idx`` under
   temporary names, renames them, then writes ``_parts/{j:06d}.json`` (its manifest and error
   rows) last: that file marks the shard complete. A rerun skips complete shards and redoes the
   rest from scratch, so a SIGKILL at any moment followed by a rerun gives identical bytes.
3. ``merge``: the parts -> ``manifest.parquet``, ``errors.parquet``, ``dataset.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crisscross.preprocess import media
from crisscross.preprocess.sources import SourceItem, load_sources
from crisscross.shards import format as fmt
from crisscross.shards.writer import ShardWriter, idx_path_for, sample_digest

PLAN_FILE = "_plan.json"
PARTS_DIR = "_parts"
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


@dataclass
class BuildStats:
    out_dir: Path
    samples: int = 0
    errors: int = 0
    shards: int = 0
    shards_skipped: int = 0  # already complete (resume)
    seconds: float = 0.0  # total sample duration
    bytes: int = 0
    wall_s: float = 0.0
    error_reasons: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.samples / self.wall_s if self.wall_s else float("nan")
        per_sec = self.bytes / self.seconds if self.seconds else float("nan")
        return (f"{self.samples} samples ({self.modalities}) in {self.shards} shards "
                f"({self.shards_skipped} already complete), {self.errors} errors {self.error_reasons}; "
                f"{self.seconds:.1f} s of media, {self.bytes / 1e6:.1f} MB ({per_sec / 1e3:.1f} kB per clip-second); "
                f"{self.wall_s:.1f} s wall, {rate:.2f} clips/s -> {self.out_dir}")


# ---------------------------------------------------------------- planning

def _slug(text: str) -> str:
    stem = Path(text.split("#")[0]).stem
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem.encode("ascii", "ignore").decode()).strip("_")[:40] or "x"


def sample_key(item: SourceItem, clip_index: int) -> str:
    """Readable, unique and dot-free: ``<ascii stem>_<sha1(source_id)[:10]>_<clip>``."""
    digest = hashlib.sha1(item.source_id.encode("utf-8")).hexdigest()[:10]
    return f"{_slug(item.source_id)}_{digest}_{clip_index:04d}"


def _clip_spans(item: SourceItem, clip_seconds: float | None, min_seconds: float) -> list[tuple[float, float | None]]:
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
        for i, (start, end) in enumerate(_clip_spans(item, cfg.clip_seconds, cfg.min_seconds)):
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


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


# ---------------------------------------------------------------- one shard

def part_path(out_dir: Path, shard: int) -> Path:
    return out_dir / PARTS_DIR / f"{shard:06d}.json"


def shard_is_complete(out_dir: Path, cfg: BuildConfig, shard: int) -> bool:
    part = part_path(out_dir, shard)
    if not part.exists():
        return False
    tar_name = json.loads(part.read_text())["tar"]
    return tar_name is None or ((out_dir / tar_name).exists() and idx_path_for(out_dir / tar_name).exists())


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """SIGALRM-based limit; PyAV returns to Python between packets, so a stuck decode is cut off.
    Only in a main thread (signals); elsewhere no limit is applied."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _decode_group(item: SourceItem, specs: list[SampleSpec], cfg: BuildConfig) -> tuple[dict, list] | media.MediaError:
    """Decode one source for all its spans in this shard; any failure becomes a MediaError."""
    try:
        if not os.path.isfile(item.path):
            raise media.MediaError("missing", "no such file" if not os.path.exists(item.path) else "not a regular file")
        if os.path.getsize(item.path) == 0:
            raise media.MediaError("empty_file", "0 bytes")
        with _time_limit(cfg.item_timeout_s):
            sha = _sha256(item.path)
            result = media.decode_source(item.path, [(s.start, s.end) for s in specs], cfg.media_config(),
                                         need_video=not item.audio_only)
        result.info["sha256"] = sha
        return result.info, result.clips
    except media.MediaError as exc:
        return exc
    except _Timeout:
        return media.MediaError("timeout", f"decoding took over {cfg.item_timeout_s} s")
    except (PermissionError, OSError) as exc:
        return media.MediaError("unreadable", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bad file must never take the worker down
        return media.MediaError("decode_failed", f"{type(exc).__name__}: {exc}")


def _isolated_child(conn, item: SourceItem, specs: list[SampleSpec], cfg: BuildConfig) -> None:
    conn.send(_decode_group(item, specs, cfg))
    conn.close()


def _decode_group_isolated(item: SourceItem, specs: list[SampleSpec], cfg: BuildConfig) -> tuple[dict, list] | media.MediaError:
    """``_decode_group`` in a forked child: a decoder that crashes the process (segfault, abort)
    or hangs inside FFmpeg costs that child only and becomes an error row."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_isolated_child, args=(sender, item, specs, cfg))
    child.start()
    sender.close()
    limit = cfg.item_timeout_s + 30.0 if cfg.item_timeout_s > 0 else None  # the child's own alarm fires first
    try:
        if receiver.poll(limit):
            return receiver.recv()  # before join: a large result would block the child's send
    except EOFError:
        pass  # the child died before sending
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if child.exitcode in (0, None) or child.exitcode == -9:
        return media.MediaError("timeout", f"no result within {limit} s (decoder stuck)")
    return media.MediaError("decoder_crashed", f"decoding process died with exit code {child.exitcode}")


def _check_policy(spec: SampleSpec, clip: media.ClipMedia, info: dict, cfg: BuildConfig) -> media.MediaError | None:
    """The build's rules for a decoded clip (documented in docs/preprocess.md)."""
    has_v, has_a = clip.video_mp4 is not None, clip.audio_pcm is not None
    audio_only = spec.item.audio_only
    expected_end = spec.end if spec.end is not None else info.get("duration")
    if expected_end:
        missing = expected_end - info["decoded_end"]
        if missing > max(0.5, 0.1 * (expected_end - spec.start)):
            return media.MediaError("truncated", f"decodes to {info['decoded_end']:.2f} s of {expected_end:.2f} s")
    if cfg.require in ("av", "video") and not has_v and not audio_only:
        return media.MediaError("no_video", "no video stream (or no frame in the span)")
    if cfg.require in ("av", "audio") and not has_a:
        return media.MediaError("no_audio", "no audio stream (or no sample in the span)")
    if not has_v and not has_a:
        return media.MediaError("empty_span", "no frame and no audio sample in the span")
    duration = _duration(clip, cfg)
    if duration < cfg.min_seconds:
        return media.MediaError("too_short", f"{duration:.3f} s < min_seconds {cfg.min_seconds}")
    return None


def _duration(clip: media.ClipMedia, cfg: BuildConfig) -> float:
    v = clip.video_offset + clip.num_frames / cfg.fps if clip.video_mp4 is not None else 0.0
    a = clip.audio_offset + clip.audio_pcm.size / cfg.sample_rate if clip.audio_pcm is not None else 0.0
    return max(v, a)


def _components(spec: SampleSpec, clip: media.ClipMedia, info: dict, cfg: BuildConfig,
                label_index: int) -> tuple[dict[str, bytes], dict]:
    has_v, has_a = clip.video_mp4 is not None, clip.audio_pcm is not None
    duration = _duration(clip, cfg)
    n_audio = clip.audio_pcm.size if has_a else 0
    index = fmt.encode_index({
        fmt.Index.NUM_FRAMES: clip.num_frames, fmt.Index.FPS: cfg.fps if has_v else 0,
        fmt.Index.NUM_AUDIO_SAMPLES: n_audio, fmt.Index.SAMPLE_RATE: cfg.sample_rate if has_a else 0,
        fmt.Index.T0: spec.start, fmt.Index.DURATION: duration,
        fmt.Index.HAS_VIDEO: int(has_v), fmt.Index.HAS_AUDIO: int(has_a),
        fmt.Index.VIDEO_OFFSET: clip.video_offset, fmt.Index.AUDIO_OFFSET: clip.audio_offset,
    })
    meta = {
        "key": spec.key, "format_version": fmt.FORMAT_VERSION, "source": spec.item.source_id,
        "source_sha256": info.get("sha256"), "label": spec.item.label, "label_index": label_index,
        "split": spec.item.split, "fold": spec.item.fold, "clip_index": spec.clip_index,
        "clip_start": spec.start, "clip_end": spec.start + duration,
        "original": {k: v for k, v in sorted(info.items()) if k != "sha256"},
    }
    comps: dict[str, bytes] = {}
    if has_v:
        comps[fmt.VIDEO_EXT] = clip.video_mp4
    if has_a:
        ext = fmt.AUDIO_PCM_EXT if cfg.audio_format == "pcm" else fmt.AUDIO_FLAC_EXT
        comps[ext] = media.encode_audio(clip.audio_pcm, cfg.sample_rate, cfg.audio_format)
    comps[fmt.INDEX_EXT] = index
    comps[fmt.META_EXT] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    row = {"key": spec.key, "label": spec.item.label or "", "label_index": label_index,
           "split": spec.item.split, "fold": spec.item.fold,
           "modalities": "av" if has_v and has_a else ("v" if has_v else "a"),
           "duration": duration, "frames": clip.num_frames, "audio_samples": n_audio,
           "source": spec.item.source_id, "clip_index": spec.clip_index, "t0": spec.start}
    return comps, row


def _error_row(spec: SampleSpec, err: media.MediaError) -> dict:
    return {"source": spec.item.source_id, "path": spec.item.path, "key": spec.key,
            "clip_index": spec.clip_index, "reason": err.reason, "detail": err.detail[:500]}


def _remove_leftovers(out_dir: Path, tar_path: Path, shard: int) -> None:
    """A killed run may have left this shard half-written; only this shard's task writes these."""
    idx = idx_path_for(tar_path)
    stale = [tar_path, idx, *out_dir.glob(f".{tar_path.name}.tmp-*"), *out_dir.glob(f".{idx.name}.tmp-*"),
             *(out_dir / PARTS_DIR).glob(f".{shard:06d}.json.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)


def _remove_temp_files(out_dir: Path) -> None:
    """At merge every task is done: any temp file left is from a killed process."""
    for path in [*out_dir.glob(".*.tmp-*"), *(out_dir / PARTS_DIR).glob(".*.tmp-*")]:
        path.unlink(missing_ok=True)


def write_shard(out_dir: Path, plan: dict, shard: int, progress=None, isolate: bool = False) -> dict:
    """Build shard ``shard`` of ``plan`` from scratch (idempotent: same bytes every time).

    ``isolate``: decode each source in its own child process (see _decode_group_isolated).
    """
    cfg = BuildConfig(**plan["config"])
    specs = specs_of_shard(plan, shard)
    label_index = {label: i for i, label in enumerate(plan["labels"])}
    tar_path = out_dir / fmt.shard_name(cfg.name, shard)
    _remove_leftovers(out_dir, tar_path, shard)
    by_source: dict[str, list[SampleSpec]] = {}
    for spec in specs:
        by_source.setdefault(spec.item.source_id, []).append(spec)
    remaining = Counter(spec.item.source_id for spec in specs)
    decoded: dict[str, tuple | media.MediaError] = {}  # freed once a source's last clip is written
    writer = ShardWriter(tar_path)
    rows, errors = [], []
    try:
        for spec in specs:
            sid = spec.item.source_id
            if sid not in decoded:
                decode = _decode_group_isolated if isolate else _decode_group
                decoded[sid] = decode(spec.item, by_source[sid], cfg)
            result = decoded[sid]
            problem = result if isinstance(result, media.MediaError) else None
            if problem is None:
                info, clips = result
                clip = clips[by_source[sid].index(spec)]
                problem = _check_policy(spec, clip, info, cfg)
            if problem is not None:
                errors.append(_error_row(spec, problem))
            else:
                comps, row = _components(spec, clip, info, cfg, label_index.get(spec.item.label, -1))
                row["bytes"] = writer.add(spec.key, comps)
                row["sha256"] = sample_digest(comps)
                row["shard"] = tar_path.name
                rows.append(row)
            remaining[sid] -= 1
            if remaining[sid] == 0:
                del decoded[sid]
            if progress is not None:
                progress(1)
        if rows:
            tar_bytes = writer.finish()
        else:
            tar_bytes = None
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    part = {"shard": shard, "tar": tar_path.name if rows else None, "tar_bytes": tar_bytes,
            "samples": rows, "errors": errors}
    (out_dir / PARTS_DIR).mkdir(exist_ok=True)
    write_json_atomic(part_path(out_dir, shard), part)  # last: marks the shard complete
    return part


# ---------------------------------------------------------------- merge

def _library_versions() -> dict:
    import av

    import crisscross

    return {"crisscross": crisscross.__version__, "python": sys.version.split()[0], "av": av.__version__,
            "ffmpeg": str(getattr(av, "ffmpeg_version_info", "")), "numpy": np.__version__}


def merge(out_dir: str | Path) -> BuildStats:
    """Write manifest.parquet, errors.parquet and dataset.json from the completed shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    plan = json.loads((out_dir / PLAN_FILE).read_text())
    cfg = BuildConfig(**plan["config"])
    missing = [j for j in range(len(plan["shards"])) if not shard_is_complete(out_dir, cfg, j)]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) not complete yet (e.g. {missing[:5]}); run the missing tasks first")
    _remove_temp_files(out_dir)
    parts = [json.loads(part_path(out_dir, j).read_text()) for j in range(len(plan["shards"]))]
    rows = [row for p in parts for row in p["samples"]]
    errors = [e for p in parts for e in p["errors"]]
    _write_parquet(out_dir / "manifest.parquet", rows, _MANIFEST_SCHEMA(pa))
    _write_parquet(out_dir / "errors.parquet", errors, _ERRORS_SCHEMA(pa))
    stats = BuildStats(out_dir=out_dir, samples=len(rows), errors=len(errors),
                       shards=sum(p["tar"] is not None for p in parts),
                       seconds=float(sum(r["duration"] for r in rows)), bytes=int(sum(r["bytes"] for r in rows)),
                       error_reasons=dict(sorted(Counter(e["reason"] for e in errors).items())),
                       modalities=dict(sorted(Counter(r["modalities"] for r in rows).items())))
    dataset = {
        "format_version": fmt.FORMAT_VERSION, "name": cfg.name, "input": plan["input"],
        "build": plan["config"], "labels": plan["labels"],
        "shards": [p["tar"] for p in parts if p["tar"] is not None],
        "counts": {"sources": plan["sources"], "samples": stats.samples, "errors": stats.errors,
                   "shards": stats.shards, "seconds": round(stats.seconds, 6), "sample_bytes": stats.bytes,
                   "shard_bytes": int(sum(p["tar_bytes"] or 0 for p in parts)),
                   "modalities": stats.modalities, "error_reasons": stats.error_reasons,
                   "by_split": dict(sorted(Counter(r["split"] for r in rows).items()))},
        "versions": _library_versions(),
    }
    write_json_atomic(out_dir / "dataset.json", dataset)
    return stats


def _MANIFEST_SCHEMA(pa):  # noqa: N802 - a schema constant built lazily (pyarrow import)
    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("label", pa.string()),
                      ("label_index", pa.int64()), ("split", pa.string()), ("fold", pa.int64()),
                      ("modalities", pa.string()), ("duration", pa.float64()), ("frames", pa.int64()),
                      ("audio_samples", pa.int64()), ("bytes", pa.int64()), ("source", pa.string()),
                      ("clip_index", pa.int64()), ("t0", pa.float64()), ("sha256", pa.string())])


def _ERRORS_SCHEMA(pa):  # noqa: N802
    return pa.schema([("source", pa.string()), ("path", pa.string()), ("key", pa.string()),
                      ("clip_index", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])


def _write_parquet(path: Path, rows: list[dict], schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- entry point

def build_shards(input: str | Path, out_dir: str | Path, *, name: str | None = None, fps: int = fmt.DEFAULT_FPS,
                 short_side: int = fmt.DEFAULT_SHORT_SIDE, sample_rate: int = fmt.DEFAULT_SAMPLE_RATE,
                 clip_seconds: float | None = None, shard_size_bytes: int = 1_000_000_000, workers: int = 1,
                 seed: int = 0, audio_format: str = "pcm", engine: str = "local", num_tasks: int = 1,
                 task_index: int = 0, address: str | None = None, progress: bool = True,
                 isolate: bool = False, **config) -> BuildStats:
    """Build (or resume) a shard dataset from ``input`` into ``out_dir``; see the module doc.

    ``engine``: ``local`` (process pool of ``workers``), ``ray`` (``address`` of a cluster, or a
    local instance). With ``num_tasks > 1`` only shards ``j % num_tasks == task_index`` are built
    and the dataset files are left to ``merge(out_dir)``.
    """
    from crisscross.preprocess import engines

    t_start = time.monotonic()
    out_dir = Path(out_dir)
    cfg = BuildConfig(name=name or "data", fps=fps, short_side=short_side, sample_rate=sample_rate,
                      clip_seconds=clip_seconds, shard_size_bytes=shard_size_bytes, seed=seed,
                      audio_format=audio_format, **config)
    cfg.validate()
    plan = load_or_make_plan(input, out_dir, cfg)
    mine = [j for j in range(len(plan["shards"])) if j % num_tasks == task_index]
    todo = [j for j in mine if not shard_is_complete(out_dir, cfg, j)]
    engines.run_shards(out_dir, plan, todo, engine=engine, workers=workers, address=address, progress=progress,
                       isolate=isolate)
    if num_tasks > 1:
        stats = BuildStats(out_dir=out_dir, shards=len(mine))
    else:
        stats = merge(out_dir)
    stats.shards_skipped = len(mine) - len(todo)
    stats.wall_s = time.monotonic() - t_start
    return stats
