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
import os
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
    span_end: float | None  # None: to the end of the source
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


def _pixel_aspect(stream) -> float:
    """Sample (pixel) aspect ratio; 1 when unknown or unset (0/1)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return float(sar) if sar else 1.0


def _stream_start(stream: av.stream.Stream | None) -> float | None:
    if stream is None or stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


# FFmpeg reads a name like "http:host:80", "concat:a|b" or "subfile,,0,9,:x" as a protocol URL,
# and playlist/reference demuxers (HLS, DASH, concat scripts) open further inputs on their own.
# A source is opened as "file:<absolute path>" with only the file protocol allowed (inherited by
# anything a demuxer opens) and without the demuxers whose job is to read other inputs, so the
# bytes decoded are always the named local file's, and nothing reaches the network.
_REFERENCE_DEMUXERS = {"hls", "applehttp", "dash", "webm_dash_manifest", "concat", "sdp", "rtsp", "rtp", "tee"}
_OPEN_OPTIONS = {"protocol_whitelist": "file",
                 "format_whitelist": ",".join(sorted(set(av.formats_available) - _REFERENCE_DEMUXERS))}

# one decode covers at most this much source timeline (clips further apart are decoded in
# separate passes), and a sample without an end (no --clip-seconds) may be at most this long:
# the bound on a worker's memory per source (docs/preprocess.md)
DECODE_WINDOW_S = 600.0


def open_local(path: str):
    """``av.open`` of a local file only (see _OPEN_OPTIONS); FFmpeg errors propagate."""
    return av.open("file:" + os.path.abspath(path), options=dict(_OPEN_OPTIONS))


def probe(path: str) -> dict:
    """Cheap header read: stream presence and duration (seconds) for planning clip spans."""
    try:
        with open_local(path) as container:
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
        raise MediaError("absurd_resolution", f"{width}x{height}")
    if width * height > cfg.max_source_pixels:
        raise MediaError("absurd_resolution", f"{width}x{height} exceeds {cfg.max_source_pixels} pixels")
    if min(width, height) < cfg.min_source_side:
        raise MediaError("absurd_resolution", f"{width}x{height} has a side under {cfg.min_source_side} px")
    if max(width, height) / min(width, height) > cfg.max_aspect_ratio:
        raise MediaError("absurd_resolution", f"{width}x{height} aspect ratio over {cfg.max_aspect_ratio}")


class _JpegEncoder:
    """Encodes frames to standalone JPEG packets (every MJPEG frame is a keyframe)."""

    def __init__(self, width: int, height: int, rotation: int, cfg: MediaConfig, pixel_aspect: float = 1.0):
        self.rotation = rotation  # degrees counter-clockwise to apply so the picture is upright
        quarter_turns = (rotation // 90) % 4
        # non-square pixels (anamorphic SD): scale to the *displayed* shape, square pixels out;
        # a quarter turn swaps the sides: scale before rotating, to the rotated output size
        w, h = output_size(round(width * pixel_aspect), height, cfg.short_side)
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


def _downmix(planar: np.ndarray) -> np.ndarray:
    """Mono = the mean of the channels (FFmpeg's default matrix would add them at -3 dB, which
    can clip correlated stereo)."""
    return planar[0].astype(np.float32) if planar.shape[0] == 1 else planar.mean(axis=0, dtype=np.float32)


def resample_audio(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) whose output sample n is input time n / rate_out.

    soxr compensates its own filter delay, so the first output sample is the first input
    instant and the index's audio times stay exact (tests check the lag against the signal).
    """
    import soxr

    return soxr.resample(x.astype(np.float32), rate_in, rate_out, quality="HQ").astype(np.float32)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


# still images (and animated GIF/APNG: no audio, no real frame rate) are not video sources;
# every "*_pipe" demuxer (png_pipe, jpeg_pipe, webp_pipe, ...) is an image format too
_IMAGE_FORMATS = {"image2", "gif", "apng", "ico"}
SEEK_MIN_START = 4.0  # seek (instead of decoding from 0) when every span starts this late
SEEK_MARGIN = 2.0  # seek this much before the span, then decode forward to it


def decode_source(path: str, spans: list[tuple[float, float | None]], cfg: MediaConfig,
                  need_video: bool = True, need_audio: bool = True) -> SourceMedia:
    """Decode ``path`` once and cut every span [start, end) (end None = to the end) from it.

    Raises MediaError with a reason code for anything that cannot become a sample.
    """
    for start, end in spans:  # the plan validates spans; a NaN here would make the decode loop endless
        if not (math.isfinite(start) and start >= 0 and (end is None or (math.isfinite(end) and end > start))):
            raise MediaError("bad_span", f"span [{start}, {end}) is not a finite, ordered pair of times")
    first_start = min(s for s, _ in spans)
    seek_to = first_start - SEEK_MARGIN if first_start >= SEEK_MIN_START else None
    media = _decode_path(path, spans, cfg, need_video, need_audio, seek_to)
    if seek_to is not None and media.info.pop("seek_overshot", False):
        media = _decode_path(path, spans, cfg, need_video, need_audio, None)  # inexact seek: no shortcut
    return media


def _open(path: str):
    try:
        return open_local(path)
    except av.InvalidDataError as exc:
        raise MediaError("not_media", f"FFmpeg cannot parse it: {exc}") from exc
    except av.ArgumentError as exc:  # what the format whitelist answers for a playlist / reference file
        raise MediaError("not_media", f"not a media file FFmpeg may read (playlists and files naming other "
                         f"inputs are refused): {exc}") from exc
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MediaError("unreadable", f"{type(exc).__name__}: {exc}") from exc


def _select_streams(container, need_video: bool, need_audio: bool):
    fmt_name = container.format.name
    is_image = fmt_name.endswith("_pipe") or fmt_name in _IMAGE_FORMATS
    videos = [s for s in container.streams.video if not _is_attached_picture(s)]
    vs = pick_stream(videos) if need_video and not is_image else None
    as_ = pick_stream(container.streams.audio) if need_audio else None
    if vs is None and as_ is None:
        if is_image:
            raise MediaError("image_file", f"a still image ({fmt_name}), not a video")
        raise MediaError("no_streams", f"no video{'' if need_video else ' (not wanted)'} and no audio stream")
    return vs, as_


def _is_attached_picture(stream) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


class _VideoTrack:
    """Streams decoded frames into every span's grid, encoding each shown frame once."""

    def __init__(self, spans: list[tuple[float, float]], cfg: MediaConfig, frame_interval: float,
                 pixel_aspect: float = 1.0):
        self.cfg = cfg
        self.pixel_aspect = pixel_aspect
        self.samplers = [_SpanSampler(s, e, cfg.fps) for s, e in spans]
        self.frame_interval = frame_interval
        self.encoder: _JpegEncoder | None = None
        self.shown = None  # [frame, time, packet or None]
        self.first_time: float | None = None
        self.last_time: float | None = None

    def _packet_of_shown(self) -> bytes:
        if self.shown[2] is None:
            self.shown[2] = self.encoder.encode(self.shown[0])
        return self.shown[2]

    def add(self, frame, t: float) -> None:
        if self.last_time is not None and t <= self.last_time:
            return  # duplicate or out-of-order timestamp: the first frame shown stays
        if self.encoder is None:
            _check_resolution(frame.width, frame.height, self.cfg)
            self.encoder = _JpegEncoder(frame.width, frame.height, int(getattr(frame, "rotation", 0) or 0), self.cfg,
                                        self.pixel_aspect)
            self.first_time = t
            for sampler in self.samplers:
                sampler.base = max(sampler.start, t)
        if self.shown is not None:
            for sampler in self.samplers:
                sampler.advance(t, self._packet_of_shown)
        self.shown = [frame, t, None]
        self.last_time = t

    def finish(self) -> float | None:
        """Flush the last frame (shown for one frame interval); returns the video's end time."""
        if self.shown is None:
            return None
        end = self.last_time + self.frame_interval
        for sampler in self.samplers:
            sampler.advance(end, self._packet_of_shown)
        return end


class _AudioTrack:
    def __init__(self, grid_origin: float | None, keep_from: float | None = None):
        # the stream's start: output samples stay on ITS 1/rate grid even when decoding began
        # later (after a seek), so a clip's audio does not depend on where decoding started
        self.grid_origin = grid_origin
        # audio ending before this instant is dropped while decoding: memory stays bounded by the
        # spans' window even when decoding starts far before them (a seek that overshot)
        self.keep_from = keep_from
        self.resampler = None  # made at the first frame: planar float at the native rate
        self.native_rate: int | None = None
        self.start: float | None = None
        self._first: float | None = None
        self._dropped = 0  # whole samples dropped from the front (start stays exact: no float drift)
        self.chunks: list[np.ndarray] = []
        self.samples = 0

    def add(self, frame, t: float) -> None:
        if self.resampler is None:
            self.start, self._first, self.native_rate = t, t, frame.sample_rate
            self.resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=self.native_rate)
        for out in self.resampler.resample(frame):
            self._append(out)

    def _append(self, out) -> None:
        planar = out.to_ndarray()  # [channels, samples]; averaged once at the end (cheaper per frame)
        self.chunks.append(planar)
        self.samples += planar.shape[1]
        while self.keep_from is not None and len(self.chunks) > 1 and \
                self.start + self.chunks[0].shape[1] / self.native_rate < self.keep_from:
            dropped = self.chunks.pop(0).shape[1]
            self.samples -= dropped
            self._dropped += dropped
            self.start = self._first + self._dropped / self.native_rate

    def end_time(self) -> float | None:
        return None if self.start is None else self.start + self.samples / self.native_rate

    def finish(self, rate: int) -> np.ndarray:
        if self.resampler is not None:
            for out in self.resampler.resample(None):
                self._append(out)
        audio = _downmix(np.concatenate(self.chunks, axis=1)) if self.chunks else np.zeros(0, np.float32)
        audio = self._align_to_grid(audio, rate)
        if audio.size and self.native_rate != rate:
            audio = resample_audio(audio, self.native_rate, rate)
        return audio


    def _align_to_grid(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """Drop < 1/gcd(native, rate) s of leading samples so the first one lies on the grid
        ``grid_origin + n / rate`` (native and output grids coincide every 1/gcd seconds)."""
        if self.grid_origin is None or not audio.size or self.start <= self.grid_origin + 1e-9:
            return audio
        period = self.native_rate // math.gcd(self.native_rate, rate)  # native samples between common points
        drop = (-round((self.start - self.grid_origin) * self.native_rate)) % period
        self.start += drop / self.native_rate
        self.samples -= drop
        return audio[drop:]


def _decode_path(path, spans, cfg: MediaConfig, need_video: bool, need_audio: bool, seek_to: float | None) -> SourceMedia:
    container = _open(path)
    with container:
        vs, as_ = _select_streams(container, need_video, need_audio)
        starts = [s for s in (_stream_start(vs), _stream_start(as_)) if s is not None]
        origin = min(starts) if starts else 0.0
        info = _source_info(container, vs, as_)
        open_ended = [e is None for _, e in spans]  # "to the end": at most DECODE_WINDOW_S (too_long)
        spans = [(float(s), float(e) if e is not None else float(s) + DECODE_WINDOW_S) for s, e in spans]
        longest = max(e - s for s, e in spans)
        if longest > DECODE_WINDOW_S + 1e-6:
            raise MediaError("too_long", f"a {longest:.0f} s span exceeds the {DECODE_WINDOW_S:.0f} s a sample may last")
        last_end = max(e for _, e in spans)
        interval = 1.0 / float(vs.average_rate) if vs is not None and vs.average_rate else 1.0 / cfg.fps
        video = _VideoTrack(spans, cfg, interval, _pixel_aspect(vs)) if vs is not None else None
        audio = _AudioTrack(_stream_start(as_) - origin if _stream_start(as_) is not None else None,
                            keep_from=min(s for s, _ in spans) - SEEK_MARGIN) if as_ is not None else None
        for stream in (vs, as_):
            if stream is not None:
                stream.codec_context.thread_count = cfg.decoder_threads
        if seek_to is not None:
            container.seek(int((seek_to + origin) * av.time_base), backward=True)
        decode_errors, stopped_early = _demux(container, vs, as_, video, audio, origin, last_end)
        if stopped_early and any(open_ended):
            raise MediaError("too_long", f"the source runs past {last_end:.0f} s; a sample may last at most "
                             f"{DECODE_WINDOW_S:.0f} s: cut it into clips with --clip-seconds")
        video_end = video.finish() if video is not None else None
        audio_pcm = audio.finish(cfg.sample_rate) if audio is not None else np.zeros(0, np.float32)

    if seek_to is not None:
        info["seek_overshot"] = _seek_overshot(min(s for s, _ in spans), origin, (
            (video.first_time if video else None, vs), (audio.start if audio else None, as_)))
    has_video = video is not None and video.encoder is not None
    if not has_video and not audio_pcm.size:
        raise MediaError("undecodable", f"no frame and no audio sample decoded ({decode_errors} bad packets)")
    ends = [t for t in (video_end, audio.end_time() if audio else None) if t is not None]
    info.update(decode_errors=decode_errors, decoded_end=max(ends), rotation=video.encoder.rotation if has_video else 0,
                output_width=video.encoder.size[0] if has_video else 0,
                output_height=video.encoder.size[1] if has_video else 0)
    media = SourceMedia(info=info)
    for i, (start, end) in enumerate(spans):
        clip = ClipMedia(span_start=start, span_end=None if open_ended[i] else end)
        if has_video and video.samplers[i].packets:
            sampler = video.samplers[i]
            clip.num_frames = len(sampler.packets)
            clip.video_offset = sampler.base - start
            clip.video_mp4 = mux_mjpeg_mp4(sampler.packets, *video.encoder.size, cfg.fps)
        if audio_pcm.size:
            _cut_audio(clip, audio_pcm, audio.start, cfg.sample_rate)
        media.clips.append(clip)
    return media


def _seek_overshot(span_start: float, origin: float, tracks) -> bool:
    """True when a stream that exists before ``span_start`` was first decoded after it."""
    for first, stream in tracks:
        if stream is None:
            continue
        stream_start = (_stream_start(stream) or origin) - origin
        if stream_start < span_start and (first is None or first > span_start + 1e-6):
            return True
    return False


def _demux(container, vs, as_, video: _VideoTrack | None, audio: _AudioTrack | None, origin: float,
           last_end: float, max_bad_packets: int = 50) -> tuple[int, bool]:
    """Decode packets in file order until every span is covered; returns the bad packet count
    and whether decoding stopped before the end of the file."""
    decode_errors = 0
    streams = [s for s in (vs, as_) if s is not None]
    for packet in container.demux(*streams):
        try:
            frames = packet.decode()
        except av.FFmpegError:
            decode_errors += 1
            if decode_errors > max_bad_packets:
                raise MediaError("corrupt", f"over {max_bad_packets} undecodable packets") from None
            continue
        for frame in frames:
            if packet.stream is vs:
                fallback = video.last_time + video.frame_interval if video.last_time is not None else 0.0
                video.add(frame, _frame_time(frame, fallback + origin) - origin)
            else:
                audio.add(frame, _frame_time(frame, 0.0) - origin)
        video_done = video is None or (video.last_time is not None and video.last_time > last_end)
        audio_done = audio is None or (audio.end_time() is not None and audio.end_time() > last_end + 0.1)
        if video_done and audio_done:
            return decode_errors, True  # every span is covered: the rest of the file is not needed
    return decode_errors, False


def _cut_audio(clip: ClipMedia, audio: np.ndarray, audio_start: float, rate: int) -> None:
    """Keep the samples n with span_start <= audio_start + n / rate < span_end."""
    first = max(0, math.ceil((clip.span_start - audio_start) * rate - 1e-6))
    span_end = clip.span_end if clip.span_end is not None else math.inf
    last = min(audio.size, math.ceil((span_end - audio_start) * rate - 1e-6)) if span_end < math.inf else audio.size
    if last <= first:
        return
    clip.audio_pcm = _to_int16(audio[first:last])
    # to the nanosecond: the same instant reached by different float sums (decoding from a seek
    # point, or from the start with leading audio dropped) gives the same index bytes
    clip.audio_offset = round(audio_start + first / rate - clip.span_start, 9) + 0.0  # + 0.0: never -0.0


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
                    fps=float(vs.average_rate) if vs.average_rate else None, pixel_aspect=_pixel_aspect(vs),
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
