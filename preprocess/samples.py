"""One source -> decoded clips -> checked against the build's policy -> shard components.

Everything that can go wrong with one input ends here as a ``MediaError`` (an errors.parquet
row), never as an exception that stops a worker: Python errors are caught, a decode that runs too
long is interrupted (SIGALRM), and with isolation a decoder that crashes its process costs only a
forked child.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

from crisscross.preprocess import media
from crisscross.preprocess.plan import BuildConfig, SampleSpec
from crisscross.preprocess.processes import TimeLimitExceeded, call_in_child, time_limit
from crisscross.preprocess.sources import SourceItem
from crisscross.shards import format as fmt


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decode_group(item: SourceItem, specs: list[SampleSpec], cfg: BuildConfig) -> tuple[dict, list] | media.MediaError:
    """Decode one source for all its spans in this shard; any failure becomes a MediaError."""
    try:
        if item.invalid_reason:  # a bad manifest row or file name, found when planning
            raise media.MediaError(item.invalid_reason, item.invalid_detail)
        if not os.path.isfile(item.path):
            raise media.MediaError("missing", "no such file" if not os.path.exists(item.path) else "not a regular file")
        if os.path.getsize(item.path) == 0:
            raise media.MediaError("empty_file", "0 bytes")
        with time_limit(cfg.item_timeout_s):
            info, clips = _decode_windows(item, specs, cfg)
            info["sha256"] = _sha256(item.path)  # after decoding: a file FFmpeg refuses is never hashed
        return info, clips
    except media.MediaError as exc:
        return exc
    except TimeLimitExceeded:
        return media.MediaError("timeout", f"decoding took over {cfg.item_timeout_s} s")
    except (PermissionError, OSError) as exc:
        return media.MediaError("unreadable", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bad file must never take the worker down
        return media.MediaError("decode_failed", f"{type(exc).__name__}: {exc}")


def _decode_windows(item: SourceItem, specs: list[SampleSpec], cfg: BuildConfig) -> tuple[dict, list]:
    """Decode the spans in windows of at most media.DECODE_WINDOW_S of source timeline each, so
    memory stays bounded however far apart a long source's clips lie; clips in ``specs`` order."""
    order = sorted(range(len(specs)), key=lambda i: specs[i].start)
    windows: list[list[int]] = []
    for i in order:
        if windows and (specs[i].end or math.inf) - specs[windows[-1][0]].start <= media.DECODE_WINDOW_S:
            windows[-1].append(i)
        else:
            windows.append([i])
    info: dict | None = None
    clips: list = [None] * len(specs)
    for window in windows:
        result = media.decode_source(item.path, [(specs[i].start, specs[i].end) for i in window],
                                     cfg.media_config(), need_video=not item.audio_only)
        if info is None:
            info = result.info
        else:  # the policy's truncation check compares span ends with how far decoding reached
            info["decoded_end"] = max(info["decoded_end"], result.info["decoded_end"])
            info["decode_errors"] += result.info["decode_errors"]
        for i, clip in zip(window, result.clips):
            clips[i] = clip
    return info, clips


def decode_group_isolated(item: SourceItem, specs: list[SampleSpec], cfg: BuildConfig) -> tuple[dict, list] | media.MediaError:
    """``decode_group`` in a forked child: a decoder that crashes the process (segfault, abort)
    or hangs inside FFmpeg costs that child only and becomes an error row."""
    limit = cfg.item_timeout_s + 30.0 if cfg.item_timeout_s > 0 else None  # the child's own alarm fires first
    outcome = call_in_child(decode_group, item, specs, cfg, timeout=limit)
    if outcome.ok:
        return outcome.value
    if outcome.timed_out:
        return media.MediaError("timeout", f"no result within {limit} s (decoder stuck inside FFmpeg)")
    return media.MediaError("decoder_crashed", f"decoding process died with exit code {outcome.exitcode}")


def check_policy(spec: SampleSpec, clip: media.ClipMedia, info: dict, cfg: BuildConfig) -> media.MediaError | None:
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


def components(spec: SampleSpec, clip: media.ClipMedia, info: dict, cfg: BuildConfig,
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
           "source": spec.item.source_id, "group": spec.item.group or spec.item.source_id,
           "clip_index": spec.clip_index, "t0": spec.start}
    return comps, row


def error_row(spec: SampleSpec, err: media.MediaError) -> dict:
    return {"source": spec.item.source_id, "path": spec.item.path, "key": spec.key,
            "clip_index": spec.clip_index, "reason": err.reason, "detail": err.detail[:500]}

