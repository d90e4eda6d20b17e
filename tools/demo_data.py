"""Generated demo clips: real MP4 files (H.264 + AAC) made with PyAV from numpy.

Two kinds of clip:

* **Class clips** (``generate_demo_clips``) for the demo, the tests and the learning checks. A
  class label drives *both* modalities: a ball bounces with a class-specific period (and so a
  class-specific hop height, ``bounce_amplitude``) and every bounce makes a click with a
  class-specific pitch. Everything else is nuisance drawn per clip (ball and background colours,
  ball size, horizontal drift, phase, loudness, noise level), so a model must pick up rhythm,
  motion and pitch, not a constant colour, to tell the classes apart. The pitch is drawn per clip
  from a band that overlaps the neighbouring classes' bands, and the clicks sit in background
  noise at a random gain: pitch alone does not name the class, and neither does loudness, so a
  random audio encoder is not already perfect (the rhythm is the audio cue that separates every
  class, and it is the one the video shares). Because sound events line up with
  visual events, audio and video predict each other (the premise of cross-modal
  self-supervision). The ball is always brighter than the background: with both contrast
  polarities the tiny demo network could not find the ball even with labels (measured: 49% vs 99%
  supervised video accuracy on 4 classes; tools/cmd_demo.py).
* **Index clips** (``write_index_clip``) for exactness tests: frame k shows the number k as a
  block code that survives JPEG and rescaling (``read_frame_index``), and the audio is a known
  function of time (``reference_audio``), optionally starting late (``audio_delay``) to test
  A/V alignment.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from crisscross.shards.atomic import atomic_path

# --- class clips -------------------------------------------------------------------------

# Per-class (bounce period in seconds, centre of the click-pitch band in Hz). The first four periods
# grow by ~1.6x per class, wider than the +-7% per-clip jitter: the rhythm (and the hop height it
# sets) separates every class in both modalities. The pitch centres are 1.25x apart and each clip's
# pitch is drawn within +-PITCH_BAND of its centre (x1.4 either way), so every band overlaps its
# neighbours' (a 1000 Hz click may be class 1, 2 or 3): pitch is a partial cue only.
CLASS_PERIODS = (0.4, 0.65, 1.05, 1.7, 0.5, 0.8, 1.3, 2.1)
CLASS_PITCHES = (1250.0, 800.0, 1560.0, 1000.0, 640.0, 1950.0, 512.0, 2440.0)
PITCH_BAND = 1.4  # per-clip pitch = centre * U(1 / PITCH_BAND, PITCH_BAND), log-uniform
CLICK_GAIN = (0.15, 0.6)  # per-clip click amplitude: loudness is nuisance
NOISE_LEVEL = (0.01, 0.05)  # per-clip background noise (standard deviation)
MAX_CLASSES = len(CLASS_PERIODS)


@dataclass(frozen=True)
class ClipSpec:
    """What one class clip shows and sounds like: its class and its nuisance draws."""

    label: int
    period: float
    pitch: float
    gain: float
    phase: float
    radius: int
    drift: float
    ball_rgb: tuple[int, int, int]
    background_rgb: tuple[int, int, int]
    noise: float


def draw_clip_spec(label: int, rng: np.random.Generator) -> ClipSpec:
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"label must be in [0, {MAX_CLASSES}), got {label}")
    # colours are random per clip, but the ball is always the brighter of the two: one contrast
    # polarity, so that a tiny network can find the ball without first learning to ignore it
    background = rng.integers(0, 100, size=3)
    ball = rng.integers(155, 256, size=3)
    return ClipSpec(
        label=label,
        period=CLASS_PERIODS[label] * rng.uniform(0.93, 1.07),
        pitch=CLASS_PITCHES[label] * PITCH_BAND ** rng.uniform(-1.0, 1.0),
        gain=rng.uniform(*CLICK_GAIN),
        phase=rng.uniform(0.0, 1.0),
        radius=int(rng.integers(18, 27)),
        drift=rng.uniform(-0.15, 0.15),
        ball_rgb=tuple(int(c) for c in ball),
        background_rgb=tuple(int(c) for c in background),
        noise=rng.uniform(*NOISE_LEVEL),
    )


# A bounce of period T rises to a height proportional to T (in units of the free height of the
# frame), capped at 1: a quick rhythm is a low hop, a slow one a high arc, as a ball under one
# gravity-like rule. This keeps the peak speed similar across classes (so a fast class does not
# simply blur into the frame rate) and makes the rhythm visible as a shape of motion, not only as
# a timing that a 0.5-1 s window may not span.
HEIGHT_PER_SECOND = 1.0 / 2.0


def bounce_amplitude(period: float) -> float:
    """Peak height of a bounce of ``period`` seconds, as a fraction of the frame's free height."""
    return float(min(1.0, period * HEIGHT_PER_SECOND))


def _bounce_height(t: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Height above the floor in [0, 1]; 0 exactly at each bounce (a parabola per period)."""
    u = (t / spec.period + spec.phase) % 1.0
    return bounce_amplitude(spec.period) * 4.0 * u * (1.0 - u)


def _bounce_times(seconds: float, spec: ClipSpec) -> np.ndarray:
    first = (1.0 - spec.phase) * spec.period
    return np.arange(first, seconds, spec.period)


def render_class_frame(t: float, spec: ClipSpec, width: int, height: int) -> np.ndarray:
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = spec.background_rgb
    floor = height - spec.radius - 2
    cy = floor - _bounce_height(np.array([t]), spec)[0] * (floor - spec.radius - 2)
    cx = (0.5 + spec.drift * np.sin(2 * np.pi * t / 3.0)) * width
    yy, xx = np.ogrid[:height, :width]
    frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= spec.radius**2] = spec.ball_rgb
    return frame


def render_class_audio(seconds: float, spec: ClipSpec, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(round(seconds * sample_rate))
    audio = rng.normal(0.0, spec.noise, size=n).astype(np.float32)
    click_len = int(0.06 * sample_rate)
    tc = np.arange(click_len) / sample_rate
    click = (spec.gain * np.sin(2 * np.pi * spec.pitch * tc) * np.exp(-tc / 0.012)).astype(np.float32)
    for bounce in _bounce_times(seconds, spec):
        start = int(round(bounce * sample_rate))
        end = min(n, start + click_len)
        audio[start:end] += click[: end - start]
    return np.clip(audio, -1.0, 1.0)


def generate_demo_clips(
    out_dir: str | Path,
    *,
    num_classes: int = 4,
    clips_per_class: int = 8,
    seconds: float = 6.0,
    fps: int = 25,
    size: tuple[int, int] = (160, 120),
    sample_rate: int = 44100,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Path:
    """Write ``num_classes * clips_per_class`` labelled mp4 clips and ``manifest.csv``; return its path.

    The manifest has ``path,label,split`` (path relative to ``out_dir``); the last
    ``test_fraction`` of each class's clips are ``test``, the rest ``train``. Deterministic in
    ``seed``; existing complete files are rewritten identically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(clips_per_class * test_fraction))) if clips_per_class > 1 else 0
    rows = []
    for label in range(num_classes):
        for i in range(clips_per_class):
            spec = draw_clip_spec(label, rng)
            clip_rng = np.random.default_rng(rng.integers(2**63))
            name = f"class{label}_{i:03d}.mp4"
            frames = (render_class_frame(k / fps, spec, width, height) for k in range(int(round(seconds * fps))))
            audio = render_class_audio(seconds, spec, sample_rate, clip_rng)
            write_av_file(out / name, frames, audio, fps=fps, sample_rate=sample_rate)
            split = "test" if i >= clips_per_class - n_test else "train"
            rows.append({"path": name, "label": f"class{label}", "split": split})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


# --- index clips -------------------------------------------------------------------------

CODE_BITS = 12  # frame indices up to 4095 (256 s at 16 fps, 163 s at 25 fps)
CODE_GRID = (3, 4)  # rows x columns of code blocks covering the whole frame


def render_index_frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame showing ``index`` as CODE_BITS black/white blocks, most significant bit first."""
    if not 0 <= index < 2**CODE_BITS:
        raise ValueError(f"frame index {index} does not fit {CODE_BITS} bits")
    rows, cols = CODE_GRID
    bits = [(index >> (CODE_BITS - 1 - b)) & 1 for b in range(CODE_BITS)]
    grid = np.array(bits, dtype=np.uint8).reshape(rows, cols) * 255
    ys = np.minimum((np.arange(height) * rows) // height, rows - 1)
    xs = np.minimum((np.arange(width) * cols) // width, cols - 1)
    return np.repeat(grid[ys][:, xs][:, :, None], 3, axis=2)


def read_frame_index(frame_rgb: np.ndarray) -> int:
    """Inverse of ``render_index_frame`` for a decoded (possibly rescaled, lossy) frame."""
    height, width = frame_rgb.shape[:2]
    rows, cols = CODE_GRID
    gray = np.asarray(frame_rgb, dtype=np.float32).mean(axis=2) if frame_rgb.ndim == 3 else frame_rgb
    value = 0
    for r in range(rows):
        for c in range(cols):
            # sample the middle half of each block, away from edges blurred by scaling/JPEG
            y0, y1 = (4 * r + 1) * height // (4 * rows), (4 * r + 3) * height // (4 * rows)
            x0, x1 = (4 * c + 1) * width // (4 * cols), (4 * c + 3) * width // (4 * cols)
            value = (value << 1) | int(gray[y0:y1, x0:x1].mean() > 127.5)
    return value


def reference_audio(t_seconds: np.ndarray | float, sample_rate: int = 16000) -> np.ndarray:
    """The index clips' sound at absolute times ``t``: a slow linear chirp, 220 Hz + 40 Hz/s.

    Its instantaneous frequency says what time it is, so an offset between streams shows up in
    a cross-correlation; it stays far below any Nyquist frequency used here (up to ~10 minutes).
    ``sample_rate`` is accepted for symmetry with resampling code; the signal is continuous.
    """
    t = np.asarray(t_seconds, dtype=np.float64)
    phase = 2 * np.pi * (220.0 * t + 20.0 * t * t)
    return (0.5 * np.sin(phase)).astype(np.float32)


_CONTAINER_AUDIO = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus", ".avi": "libmp3lame"}
_VIDEO_CODECS = {"h264": ("libx264", "yuv420p"), "mjpeg": ("mjpeg", "yuvj420p"), "vp9": ("libvpx-vp9", "yuv420p")}


def write_index_clip(
    path: str | Path,
    *,
    seconds: float = 4.0,
    fps: float = 25,
    size: tuple[int, int] = (160, 120),
    sample_rate: int = 16000,
    audio_delay: float = 0.0,
    codec: str = "h264",
    with_audio: bool = True,
) -> Path:
    """Write a clip whose frame k shows k and whose audio is ``reference_audio`` of absolute time.

    The audio stream starts ``audio_delay`` seconds after the video (its first packet carries that
    timestamp); its sample n is ``reference_audio(audio_delay + n / sample_rate)``.
    """
    path = Path(path)
    width, height = size
    n_frames = int(round(seconds * fps))
    frames = (render_index_frame(k, width, height) for k in range(n_frames))
    audio = None
    if with_audio:
        n_audio = int(round((seconds - audio_delay) * sample_rate))
        audio = reference_audio(audio_delay + np.arange(n_audio) / sample_rate, sample_rate)
    write_av_file(path, frames, audio, fps=fps, sample_rate=sample_rate, video_codec=codec, audio_delay=audio_delay)
    return path


# --- writing -------------------------------------------------------------------------------


def write_av_file(
    path: Path,
    frames,
    audio: np.ndarray | None,
    *,
    fps: float,
    sample_rate: int,
    video_codec: str = "h264",
    audio_delay: float = 0.0,
) -> None:
    """Encode RGB frames and mono float audio into ``path`` (container from the suffix) with PyAV.

    Written to a temporary name and renamed, so a killed generator never leaves a half file.
    """
    codec_name, pix_fmt = _VIDEO_CODECS[video_codec]
    suffix = path.suffix.lower()
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, fsync=False) as tmp, av.open(str(tmp), mode="w") as container:
        frames = iter(frames)
        first = next(frames)
        vstream = container.add_stream(codec_name, rate=rate)
        vstream.width, vstream.height = first.shape[1], first.shape[0]
        vstream.pix_fmt = pix_fmt
        if codec_name == "libx264":
            vstream.options = {"preset": "veryfast", "crf": "20", "threads": "1"}
        elif codec_name == "mjpeg":
            vstream.options = {"q:v": "3"}
        elif codec_name == "libvpx-vp9":
            vstream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b:v": "0"}
        astream = None
        if audio is not None:
            astream = container.add_stream(_CONTAINER_AUDIO.get(suffix, "aac"), rate=sample_rate)
            astream.layout = "mono"
        for k, image in enumerate(_chain(first, frames)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            vf.pts = k
            vf.time_base = Fraction(1) / rate
            for packet in vstream.encode(vf):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, audio, sample_rate, audio_delay)


def _chain(first, rest):
    yield first
    yield from rest


def _encode_audio(container, astream, audio: np.ndarray, sample_rate: int, delay: float) -> None:
    chunk = 1024
    offset = int(round(delay * sample_rate))
    samples = np.asarray(audio, dtype=np.float32)
    for start in range(0, len(samples), chunk):
        piece = samples[start : start + chunk][None, :]
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
        af.sample_rate = sample_rate
        af.pts = offset + start
        af.time_base = Fraction(1, sample_rate)
        for packet in astream.encode(af):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


# --- command line --------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo-data", help="generate labelled demo clips (mp4, H.264 + AAC) and manifest.csv")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--classes", type=int, default=4, help=f"number of classes (at most {MAX_CLASSES})")
    parser.add_argument("--clips-per-class", type=int, default=8, help="clips per class (8)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each clip in seconds (6)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate of the generated mp4s (25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same clips (0)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    manifest = generate_demo_clips(
        args.out, num_classes=args.classes, clips_per_class=args.clips_per_class,
        seconds=args.seconds, fps=args.fps, seed=args.seed,
    )
    print(f"wrote {args.classes * args.clips_per_class} clips and {manifest}")
    return 0
