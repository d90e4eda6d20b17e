"""Temporal sampling of the two views (t1, t2) per relaxation mode, as DALI arithmetic.

Everything here runs inside the DALI graph on per-sample scalars read from ``index.npy`` (no
Python per sample). Times are seconds on the sample's own timeline (0 = the span start ``t0``);
video frame k is shown at ``video_offset + k / fps`` and audio sample n at
``audio_offset + n / sample_rate`` (see :class:`crisscross.shards.format.Index`).

A *view* is a video window of ``Wv = frames * stride / fps`` seconds and an audio window of
``Wa = audio_seconds`` seconds. The *valid start interval* of a view is ``[lo, hi]`` with
``lo = max(video_offset, audio_offset)`` and ``hi = min(video_end - Wv, audio_end - Wa)``.

Two alignments (``view_alignment``):

- ``paper`` (default; paper section 3.2): both modalities of a view start together, view 1 at
  ``t1`` and view 2 at ``t2``, so the synchronous pairs (v1, a1), (v2, a2) always overlap and the
  asynchronous pairs (v1, a2), (v2, a1) are ``t2 - t1`` apart. Per mode (``docs/shards.md`` has
  the figure):

  - ``none``: ``t2 = t1``.
  - ``mild``: ``t2 = t1 + Wv / 2`` (50 % overlap of the two frame sequences).
  - ``medium``: ``t2 = t1 + Wv`` (adjacent frame sequences).
  - ``extreme``: view 1 lies in the first half of the usable span, view 2 in the second half.
  - ``extreme_official``: a fixed gap, ``t2 = t1 + extreme_gap`` (3 s in the official code).
  - ``mixed``: ``t1`` and ``t2`` drawn independently from ``[lo, hi]``.

- ``official`` (the official CrissCross code's sampler): ``mild``/``medium`` offset view 2's video
  by ``Wv/2`` resp. ``Wv`` and its audio by ``Wa/2`` resp. ``Wa`` (a ``1.5 W`` resp. ``2 W`` window
  per modality cut into first/last parts), and the video block is jittered inside the audio
  block (video start ``= audio start + U(0, (Wa - Wv) * 1.5 resp. 2)``, one draw for both views).
  ``none`` jitters the (shared) video start inside the audio window, ``mixed`` each view's.
  ``extreme``/``extreme_official`` are as in ``paper`` (the official far-apart sampler has no
  jitter). The sync pairs of ``mild``/``medium`` then do not always overlap (the test measures it).

Short clips never crash and are never silently padded; each sample gets a fallback code:

- ``FALLBACK_NONE`` (0): the mode's definition held.
- ``FALLBACK_SHRUNK`` (1): the clip is too short for the mode's offsets; the offsets are scaled
  down by the largest factor in [0, 1) that fits (``extreme``: the views split the valid start
  interval in two halves instead of the span), so views overlap more than the mode asks.
- ``FALLBACK_PADDED`` (2): the clip is shorter than one view; both views start at ``lo`` and the
  missing tail is padded (video: last frame repeated, audio: zeros).

The loader counts the codes (``TrainLoader.stats()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali.pipeline import DataNode

from crisscross.shards import format as shard_format

RELAXATION_MODES = ("none", "mild", "medium", "extreme", "extreme_official", "mixed")
VIEW_ALIGNMENTS = ("paper", "official")
FALLBACK_NONE, FALLBACK_SHRUNK, FALLBACK_PADDED = 0, 1, 2


@dataclass(frozen=True)
class ViewGeometry:
    """Durations of one view: ``frames`` video frames taken every ``stride`` shard frames."""

    frames: int = 8
    stride: int = 1
    audio_seconds: float = 2.0
    fps: float = float(shard_format.DEFAULT_FPS)
    sample_rate: int = shard_format.DEFAULT_SAMPLE_RATE

    @property
    def video_seconds(self) -> float:
        return self.frames * self.stride / self.fps

    @property
    def audio_samples(self) -> int:
        return int(round(self.audio_seconds * self.sample_rate))


@dataclass
class ClipSpan:
    """Per-sample DALI scalars (float64) describing where each stream lives on the timeline."""

    num_frames: DataNode
    fps: DataNode
    num_audio: DataNode
    sample_rate: DataNode
    video_offset: DataNode
    audio_offset: DataNode

    @property
    def video_end(self) -> DataNode:
        return self.video_offset + self.num_frames / self.fps

    @property
    def audio_end(self) -> DataNode:
        return self.audio_offset + self.num_audio / self.sample_rate


@dataclass
class ViewStarts:
    """Start times (seconds, float64 DALI scalars) of both modalities of both views."""

    video1: DataNode
    audio1: DataNode
    video2: DataNode
    audio2: DataNode
    fallback: DataNode  # int32 code, see module docstring


def parse_index(index_bytes: DataNode) -> DataNode:
    """``index.npy`` bytes -> float64 vector, without Python: skip the fixed header, reinterpret."""
    payload = index_bytes[shard_format.NPY_HEADER_BYTES:]
    return fn.reinterpret(payload, dtype=types.FLOAT64)


def clip_span(index: DataNode) -> ClipSpan:
    idx = shard_format.Index
    return ClipSpan(
        num_frames=index[int(idx.NUM_FRAMES)],
        fps=index[int(idx.FPS)],
        num_audio=index[int(idx.NUM_AUDIO_SAMPLES)],
        sample_rate=index[int(idx.SAMPLE_RATE)],
        video_offset=index[int(idx.VIDEO_OFFSET)],
        audio_offset=index[int(idx.AUDIO_OFFSET)],
    )


def _uniform() -> DataNode:
    return fn.random.uniform(range=[0.0, 1.0], dtype=types.FLOAT64)


def _as_float(cond: DataNode) -> DataNode:
    return fn.cast(cond, dtype=types.FLOAT64)


def _select(cond: DataNode, if_true, if_false) -> DataNode:
    """Per-sample ``cond ? a : b`` with arithmetic (cond is a 0/1 float)."""
    return cond * if_true + (1.0 - cond) * if_false


def _fixed_offset_starts(span: ClipSpan, geo: ViewGeometry, dv: float, da: float, *, jitter: bool = False) -> ViewStarts:
    """Modes whose view-2 offsets are constants (none, mild, medium, extreme_official): view 2's
    video starts ``dv`` after view 1's, its audio ``da`` after. ``jitter``: the official code's
    within-view jitter (the shorter modality's block drawn inside the longer one's)."""
    lo = dmath.max(span.video_offset, span.audio_offset)
    room_v = span.video_end - geo.video_seconds - lo  # slack left for the offset + t1 draw
    room_a = span.audio_end - geo.audio_seconds - lo
    room = dmath.min(room_v - dv, room_a - da)
    fits = _as_float(room >= 0.0)
    fits_one_view = _as_float(dmath.min(room_v, room_a) >= 0.0)
    # Largest scale in [0, 1] that makes both offsets fit (1e-12 guards offsets of 0).
    scale = dmath.clamp(dmath.min(room_v / max(dv, 1e-12), room_a / max(da, 1e-12)), 0.0, 1.0)
    scale = _select(fits, 1.0, scale * fits_one_view)
    t1 = lo + _uniform() * dmath.max(room, 0.0) * fits
    fallback = _select(fits, float(FALLBACK_NONE), _select(fits_one_view, float(FALLBACK_SHRUNK), float(FALLBACK_PADDED)))
    if dv == 0.0 and da == 0.0:  # mode none: a short clip is only ever padded, never shrunk
        fallback = _select(fits_one_view, float(FALLBACK_NONE), float(FALLBACK_PADDED))
    video1 = audio1 = t1
    if jitter:
        video1, audio1 = _jitter_blocks(span, geo, t1, scale * dv, scale * da, fits_one_view)
    return ViewStarts(video1, audio1, video1 + scale * dv, audio1 + scale * da, fn.cast(fallback, dtype=types.INT32))


def _jitter_blocks(span: ClipSpan, geo: ViewGeometry, start: DataNode, dv, da, fits: DataNode) -> tuple[DataNode, DataNode]:
    """Official code (``_sample_snippet``): the longer modality's block (both views: ``W + d``)
    starts at ``start``; the shorter one's is drawn uniformly inside it, clipped to its stream's
    end. ``fits`` (0/1): 0 for a padded sample, which keeps both starts at ``start`` as the official
    code does for clips shorter than a view. Returns (video start, audio start) of view 1."""
    block_v, block_a = geo.video_seconds + dv, geo.audio_seconds + da
    if geo.audio_seconds >= geo.video_seconds:
        slack = dmath.max(dmath.min(start + block_a, span.video_end) - block_v - start, 0.0) * fits
        return start + _uniform() * slack, start
    slack = dmath.max(dmath.min(start + block_v, span.audio_end) - block_a - start, 0.0) * fits
    return start, start + _uniform() * slack


def _extreme_starts(span: ClipSpan, geo: ViewGeometry) -> ViewStarts:
    """Paper: one view inside the first half of the usable span, the other inside the second half."""
    lo = dmath.max(span.video_offset, span.audio_offset)
    end = dmath.min(span.video_end, span.audio_end)
    hi = dmath.min(span.video_end - geo.video_seconds, span.audio_end - geo.audio_seconds)
    mid = 0.5 * (lo + end)
    window = max(geo.video_seconds, geo.audio_seconds)
    halves_fit = _as_float(mid - window >= lo)
    one_fits = _as_float(hi >= lo)
    # Halves: t1 in [lo, mid - window], t2 in [mid, hi].
    t1_halves = lo + _uniform() * dmath.max(mid - window - lo, 0.0)
    t2_halves = mid + _uniform() * dmath.max(hi - mid, 0.0)
    # Fallback: split the valid start interval [lo, hi] at its midpoint instead.
    split = 0.5 * (lo + dmath.max(hi, lo))
    t1_split = lo + _uniform() * (split - lo)
    t2_split = split + _uniform() * (dmath.max(hi, lo) - split)
    t1 = _select(halves_fit, t1_halves, t1_split)
    t2 = _select(halves_fit, t2_halves, t2_split)
    fallback = _select(halves_fit, float(FALLBACK_NONE), _select(one_fits, float(FALLBACK_SHRUNK), float(FALLBACK_PADDED)))
    return ViewStarts(t1, t1, t2, t2, fn.cast(fallback, dtype=types.INT32))


def _mixed_starts(span: ClipSpan, geo: ViewGeometry, *, jitter: bool = False) -> ViewStarts:
    lo = dmath.max(span.video_offset, span.audio_offset)
    hi = dmath.min(span.video_end - geo.video_seconds, span.audio_end - geo.audio_seconds)
    width = dmath.max(hi - lo, 0.0)
    t1 = lo + _uniform() * width
    t2 = lo + _uniform() * width
    fits = _as_float(hi >= lo)
    fallback = fn.cast(_select(fits, float(FALLBACK_NONE), float(FALLBACK_PADDED)), dtype=types.INT32)
    if not jitter:
        return ViewStarts(t1, t1, t2, t2, fallback)
    video1, audio1 = _jitter_blocks(span, geo, t1, 0.0, 0.0, fits)
    video2, audio2 = _jitter_blocks(span, geo, t2, 0.0, 0.0, fits)
    return ViewStarts(video1, audio1, video2, audio2, fallback)


def sample_view_starts(
    span: ClipSpan,
    geo: ViewGeometry,
    mode: str,
    *,
    extreme_gap: float = 3.0,
    alignment: str = "paper",
) -> ViewStarts:
    """Draw (per sample, inside DALI) the start times of both views for a relaxation ``mode``.

    ``alignment="paper"``: both modalities of a view start together (view 2 ``Wv/2`` after view 1
    in ``mild``, ``Wv`` in ``medium``). ``"official"``: the official code's per-modality offsets
    with its within-view video jitter (module docstring)."""
    if mode not in RELAXATION_MODES:
        raise ValueError(f"unknown relaxation mode {mode!r}; expected one of {RELAXATION_MODES}")
    if alignment not in VIEW_ALIGNMENTS:
        raise ValueError(f"unknown view alignment {alignment!r}; expected one of {VIEW_ALIGNMENTS}")
    official = alignment == "official"
    if mode in ("none", "mild", "medium"):
        fraction = {"none": 0.0, "mild": 0.5, "medium": 1.0}[mode]
        dv = fraction * geo.video_seconds
        da = fraction * geo.audio_seconds if official else dv
        return _fixed_offset_starts(span, geo, dv, da, jitter=official)
    if mode == "extreme_official":
        return _fixed_offset_starts(span, geo, extreme_gap, extreme_gap)
    if mode == "extreme":
        return _extreme_starts(span, geo)
    return _mixed_starts(span, geo, jitter=official)


def start_frame(span: ClipSpan, video_start: DataNode) -> DataNode:
    """First shard frame of a view starting at ``video_start`` seconds (int32, clamped to the clip)."""
    k = dmath.floor((video_start - span.video_offset) * span.fps + 0.5)
    k = dmath.clamp(k, 0.0, dmath.max(span.num_frames - 1.0, 0.0))
    return fn.cast(k, dtype=types.INT32)


def start_sample(span: ClipSpan, audio_start: DataNode) -> DataNode:
    """First PCM sample of a view starting at ``audio_start`` seconds (int64, >= 0)."""
    n = dmath.floor((audio_start - span.audio_offset) * span.sample_rate + 0.5)
    return fn.cast(dmath.max(n, 0.0), dtype=types.INT64)
