"""Decode a source, resample it onto the shard timeline, and encode the shard components.

This is the only module of the project that touches FFmpeg (through PyAV). One call decodes a
source once and serves every clip span cut from it.

Timeline (see shards/SPEC.md): the *source timeline* starts at the earliest start time of the
selected video and audio streams (the container's per-stream start times), so a source whose
audio starts 0.3 s after its video keeps that offset. For a span starting at ``t0``:

* output video frame k is the source frame *displayed* at ``t0 + video_offset + k / fps``, i.e.
  the last decoded frame whose presentation time is <= that instant (variable frame rate
  sources included; frames are repeated or dropped as the grid needs);
* output audio sample n is heard at ``t0 + audio_offset + n / sample_rate``;
* ``video_offset``/``audio_offset`` (>= 0) are where each stream really starts inside the span.
"""

from __future__ import annotations

import fractions
import io
import math
from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# a frame presented at t is "shown" at T when t <= T + _TIME_EPS (timestamps are rationals
# converted to float; this absorbs the rounding without ever picking a frame that is 1 ms late)
_TIME_EPS = 1e-6


class MediaError(Exception):
    """A source that cannot become a sample; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaConfig:
    fps: int = 16
    short_side: int = 112
    sample_rate: int = 16000
    jpeg_qscale: int = 3  # MJPEG quantizer scale, 2 (best) .. 31; 3 is visually lossless at 112 px
    audio_format: str = "pcm"  # "pcm" (int16 little-endian) or "flac"
    max_source_pixels: int = 7680 * 4320  # above 8K is taken as a broken header, not a video
    min_source_side: int = 16
    max_aspect_ratio: float = 8.0
    decoder_threads: int = 1  # parallelism comes from workers; 1 keeps scaling linear


@dataclass
class ClipMedia:
    """One sample's encoded components for the span [span_start, span_end) of the source."""

    span_start: float
    span_end: float
    video_mp4: bytes | None = None
    num_frames: int = 0
    video_offset: float = 0.0
    audio_pcm: np.ndarray | None = None  # int16 mono
    audio_offset: float = 0.0


@dataclass
class SourceMedia:
    info: dict = field(default_factory=dict)  # original stream properties for meta.json
    clips: list[ClipMedia] = field(default_factory=list)


def _is_default(stream: av.stream.Stream) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.default)
    except (AttributeError, TypeError):
        return False


def pick_stream(streams) -> av.stream.Stream | None:
    """The stream a player would pick: the first flagged default, else the first one."""
    streams = list(streams)
    if not streams:
        return None
    defaults = [s for s in streams if _is_default(s)]
    return (defaults or streams)[0]


def _stream_start(stream: av.stream.Stream | None) -> float | None:
    if stream is None or stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def probe(path: str) -> dict:
    """Cheap header read: stream presence and duration (seconds) for planning clip spans."""
    try:
        with av.open(path) as container:
            vs = pick_stream(container.streams.video)
            as_ = pick_stream(container.streams.audio)
            duration = None
            if container.duration is not None:
                duration = container.duration / av.time_base
            return {"has_video": vs is not None, "has_audio": as_ is not None, "duration": duration}
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("unreadable", f"{type(exc).__name__}: {exc}") from exc


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is ``short_side``; both sides even (4:2:0 chroma)."""
    scale = short_side / min(width, height)
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def _check_resolution(width: int, height: int, cfg: MediaConfig) -> None:
    if width <= 0 or height <= 0:
        raise MediaError("bad_resolution", f"{width}x{height}")
    if width * height > cfg.max_source_pixels:
        raise MediaError("absurd_resolution", f"{width}x{height} exceeds {cfg.max_source_pixels} pixels")
    if min(width, height) < cfg.min_source_side:
        raise MediaError("absurd_resolution", f"{width}x{height} has a side under {cfg.min_source_side} px")
    if max(width, height) / min(width, height) > cfg.max_aspect_ratio:
        raise MediaError("absurd_resolution", f"{width}x{height} aspect ratio over {cfg.max_aspect_ratio}")


class _JpegEncoder:
    """Encodes frames to standalone JPEG packets (every MJPEG frame is a keyframe)."""

    def __init__(self, width: int, height: int, rotation: int, cfg: MediaConfig):
        self.rotation = rotation  # degrees counter-clockwise to apply so the picture is upright
        quarter_turns = (rotation // 90) % 4
        # a quarter turn swaps the sides: scale before rotating, to the rotated output size
        w, h = output_size(width, height, cfg.short_side)
        self.scaled_size = (w, h)
        self.size = (h, w) if quarter_turns % 2 else (w, h)
        self.quarter_turns = quarter_turns
        ctx = av.codec.CodecContext.create("mjpeg", "w")
        ctx.width, ctx.height = self.size
        ctx.pix_fmt = "yuvj420p"
        ctx.time_base = fractions.Fraction(1, cfg.fps)
        ctx.thread_count = 1  # slice threads would still be deterministic, but 1 keeps cores for workers
        ctx.qmin = ctx.qmax = cfg.jpeg_qscale
        ctx.open()
        self.ctx = ctx
        self.count = 0
        self.scaler = VideoReformatter()

    def encode(self, frame: av.VideoFrame) -> bytes:
        w, h = self.scaled_size
        # limited-range source -> full-range JPEG (the MJPEG encoder refuses anything else)
        src_range = frame.color_range or "MPEG"
        if self.quarter_turns:
            small = self.scaler.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA",
                                         src_color_range=src_range, dst_color_range="JPEG", threads=1)
            rgb = np.ascontiguousarray(np.rot90(small.to_ndarray(), k=self.quarter_turns))
            out = self.scaler.reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuvj420p",
                                       src_color_range="JPEG", dst_color_range="JPEG", threads=1)
        else:
            out = self.scaler.reformat(frame, width=w, height=h, format="yuvj420p", interpolation="AREA",
                                       src_color_range=src_range, dst_color_range="JPEG", threads=1)
        out.pts = self.count  # the encoder wants increasing pts; the muxer re-stamps them
        out.time_base = self.ctx.time_base  # else PyAV rescales the pts from the source's time base
        self.count += 1
        packets = self.ctx.encode(out)
        if len(packets) != 1:
            raise MediaError("encode_failed", f"MJPEG encoder returned {len(packets)} packets")
        return bytes(packets[0])


def mux_mjpeg_mp4(packets: list[bytes], width: int, height: int, fps: int) -> bytes:
    """Put JPEG packets into an MP4 at constant ``fps`` (pts = k), bit-exact muxer output."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p"
        stream.codec_context.thread_count = 1
        stream.time_base = fractions.Fraction(1, fps)
        for k, data in enumerate(packets):
            packet = av.Packet(data)
            packet.pts = packet.dts = k
            packet.duration = 1
            packet.time_base = fractions.Fraction(1, fps)
            packet.is_keyframe = True
            packet.stream = stream
            out.mux(packet)
    return buf.getvalue()


class _SpanSampler:
    """Picks, for one span, the source frame displayed at each instant of the output grid."""

    def __init__(self, start: float, end: float, fps: int):
        self.start, self.end, self.fps = start, end, fps
        self.base: float | None = None  # first grid instant: max(span start, first frame time)
        self.packets: list[bytes] = []

    def _instant(self) -> float:
        return self.base + len(self.packets) / self.fps

    def advance(self, shown_until: float, packet_of_shown) -> None:
        """Emit the currently shown frame for every grid instant before ``shown_until``."""
        while True:
            instant = self._instant()
            if instant >= self.end - _TIME_EPS or instant + _TIME_EPS >= shown_until:
                return
            self.packets.append(packet_of_shown())


def _frame_time(frame, fallback: float) -> float:
    t = frame.time
    return float(t) if t is not None else fallback


def _downmix(frame: av.AudioFrame) -> np.ndarray:
    """Mono = the mean of the channels (FFmpeg's default matrix would add them at -3 dB, which
    can clip correlated stereo)."""
    return frame.to_ndarray().mean(axis=0, dtype=np.float32)


def resample_audio(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) whose output sample n is input time n / rate_out.

    soxr compensates its own filter delay, so the first output sample is the first input
    instant and the index's audio times stay exact (tests check the lag against the signal).
    """
    import soxr

    return soxr.resample(x.astype(np.float32), rate_in, rate_out, quality="HQ").astype(np.float32)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def decode_source(path: str, spans: list[tuple[float, float | None]], cfg: MediaConfig,
                  need_video: bool = True, need_audio: bool = True) -> SourceMedia:
    """Decode ``path`` once and cut every span [start, end) (end None = to the end) from it."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MediaError("unreadable", f"{type(exc).__name__}: {exc}") from exc
    with container:
        return _decode_open(container, spans, cfg, need_video, need_audio)


def _decode_open(container, spans, cfg: MediaConfig, need_video: bool, need_audio: bool) -> SourceMedia:
    vs = pick_stream(container.streams.video) if need_video else None
    as_ = pick_stream(container.streams.audio) if need_audio else None
    if vs is not None and (vs.codec_context is None or (vs.frames == 1 and vs.codec_context.name in {"png", "mjpeg", "bmp", "webp", "tiff", "gif"})):
        vs = None  # an image (or cover art), not a video
    if vs is not None and container.format.name in {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif"}:
        vs = None
    if vs is None and as_ is None:
        raise MediaError("no_streams", "no decodable video or audio stream")
    starts = [s for s in (_stream_start(vs), _stream_start(as_)) if s is not None]
    origin = min(starts) if starts else 0.0
    info = _source_info(container, vs, as_)
    end_of_source = info["duration"] if info["duration"] else math.inf
    spans = [(float(s), float(e) if e is not None else end_of_source + 1e3) for s, e in spans]

    samplers = [_SpanSampler(s, e, cfg.fps) for s, e in spans] if vs is not None else []
    encoder: _JpegEncoder | None = None
    shown = None  # (frame, time, cached packet)
    audio_chunks: list[np.ndarray] = []
    audio_start: float | None = None
    resampler = None  # made at the first audio frame: sample format only (planar float), native rate
    native_rate = None
    decode_errors = 0
    frame_interval = 1.0 / float(vs.average_rate) if vs is not None and vs.average_rate else 1.0 / cfg.fps
    if vs is not None:
        vs.thread_type = "SLICE" if cfg.decoder_threads > 1 else "NONE"
        vs.codec_context.thread_count = cfg.decoder_threads
    if as_ is not None:
        as_.codec_context.thread_count = 1

    def packet_of_shown() -> bytes:
        nonlocal shown
        frame, t, cached = shown
        if cached is None:
            cached = encoder.encode(frame)
            shown = (frame, t, cached)
        return cached

    streams = [s for s in (vs, as_) if s is not None]
    last_video_time = None
    for packet in container.demux(*streams):
        try:
            frames = packet.decode()
        except av.FFmpegError:
            decode_errors += 1
            if decode_errors > 50:
                raise MediaError("corrupt", "too many undecodable packets")
            continue
        for frame in frames:
            if packet.stream is vs:
                fallback = (last_video_time + frame_interval) if last_video_time is not None else 0.0
                t = _frame_time(frame, fallback) - origin
                if last_video_time is not None and t <= last_video_time:
                    continue  # out-of-order or duplicate timestamp: keep the first frame shown
                if encoder is None:
                    _check_resolution(frame.width, frame.height, cfg)
                    encoder = _JpegEncoder(frame.width, frame.height, int(getattr(frame, "rotation", 0) or 0), cfg)
                    info["rotation"] = encoder.rotation
                    for sampler in samplers:
                        sampler.base = max(sampler.start, t)
                if shown is not None:
                    for sampler in samplers:
                        sampler.advance(t, packet_of_shown)
                shown = (frame, t, None)
                last_video_time = t
            else:
                if audio_start is None:
                    audio_start = _frame_time(frame, 0.0) - origin
                    native_rate = frame.sample_rate
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=native_rate)
                for out in resampler.resample(frame):
                    audio_chunks.append(_downmix(out))
    if resampler is not None:
        for out in resampler.resample(None):
            audio_chunks.append(_downmix(out))
    if shown is not None:
        for sampler in samplers:
            sampler.advance(last_video_time + frame_interval, packet_of_shown)

    has_video = encoder is not None and any(s.packets for s in samplers)
    audio = np.concatenate(audio_chunks) if audio_chunks else np.zeros(0, np.float32)
    if audio.size and native_rate != cfg.sample_rate:
        audio = resample_audio(audio, native_rate, cfg.sample_rate)
    has_audio = audio.size > 0
    if not has_video and not has_audio:
        raise MediaError("undecodable", f"no frame or audio sample decoded ({decode_errors} bad packets)")
    info["decode_errors"] = decode_errors
    info["decoded_video"] = has_video
    info["decoded_audio"] = has_audio
    media = SourceMedia(info=info)
    for i, (start, end) in enumerate(spans):
        clip = ClipMedia(span_start=start, span_end=end)
        if has_video and samplers[i].packets:
            sampler = samplers[i]
            clip.num_frames = len(sampler.packets)
            clip.video_offset = sampler.base - start
            clip.video_mp4 = mux_mjpeg_mp4(sampler.packets, *encoder.size, cfg.fps)
        if has_audio:
            _cut_audio(clip, audio, audio_start, cfg.sample_rate)
        media.clips.append(clip)
    media.info["output_width"], media.info["output_height"] = encoder.size if encoder else (0, 0)
    return media


def _cut_audio(clip: ClipMedia, audio: np.ndarray, audio_start: float, rate: int) -> None:
    """Cut whole samples of the resampled track that fall inside the span."""
    first = max(0, math.ceil((clip.span_start - audio_start) * rate - 1e-6))
    last = min(audio.size, math.floor((clip.span_end - audio_start) * rate + 1e-6))
    if last <= first:
        return
    clip.audio_pcm = _to_int16(audio[first:last])
    clip.audio_offset = audio_start + first / rate - clip.span_start


def _source_info(container, vs, as_) -> dict:
    duration = container.duration / av.time_base if container.duration is not None else None
    if duration is None:
        durations = [float(s.duration * s.time_base) for s in (vs, as_) if s is not None and s.duration]
        duration = max(durations) if durations else None
    info: dict = {"container": container.format.name, "duration": duration,
                  "video_streams": len(container.streams.video), "audio_streams": len(container.streams.audio)}
    if vs is not None:
        cc = vs.codec_context
        info.update(video_stream=vs.index, video_codec=cc.name, width=cc.width, height=cc.height,
                    fps=float(vs.average_rate) if vs.average_rate else None,
                    video_start=_stream_start(vs))
    if as_ is not None:
        cc = as_.codec_context
        info.update(audio_stream=as_.index, audio_codec=cc.name, sample_rate=cc.sample_rate,
                    channels=cc.channels if hasattr(cc, "channels") else None,
                    audio_start=_stream_start(as_))
    return info


def encode_audio(pcm: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    """int16 mono -> component bytes: raw little-endian PCM, or a FLAC file (lossless)."""
    if audio_format == "pcm":
        return pcm.astype("<i2").tobytes()
    if audio_format == "flac":
        import soundfile  # libsndfile; FLAC output is deterministic for the same input

        buf = io.BytesIO()
        soundfile.write(buf, pcm.astype(np.int16), sample_rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue()
    raise ValueError(f"unknown audio format {audio_format!r}")
