"""The faithful anchor of ``crisscross bench loader``: the official CrissCross pretraining loader's
per-clip work, written here from reading the official code (github.com/pritamqu/CrissCross,
``crisscross/train/datasets``), not copied from it.

Per clip, as the official ``two_clips`` / ``overlapped`` dataset with the ``strong`` transforms of
its Kinetics-400 config (``train/configs/pretext/kinetics400/crisscross.yaml``):

* open the source with PyAV, read the streams' time limits;
* draw a 3 s audio window, then a 0.75 s video window inside it (the official snippet sampler);
* video: seek, decode from the key frame, convert to an RGB PIL image **only** the frames that are
  kept (12 at 16 fps for 0.75 s; a source frame shown twice is converted once);
* audio: seek again, decode the packets that overlap the window, resample each frame to 16 kHz
  mono int16 with PyAV's resampler, trim, scale to [-1, 1];
* two views: frames ``[:8]`` and ``[-8:]``, samples ``[:32000]`` and ``[-32000:]`` (50 % overlap);
* per video view, one parameter draw for all its frames, on PIL images: random resized crop
  (scale 0.08-1, bilinear, 112 px, cropped from the full-resolution frame), horizontal flip
  (p 0.5), colour jitter (0.4, 0.4, 0.4, 0.2) in random order, grayscale (p 0.2, one channel),
  Gaussian blur (p 0.5, 11 px kernel; PIL -> float tensor -> conv -> PIL per frame, as
  torchvision's functional API does for PIL input); then the clip is stacked into a float64
  array, made float32 / 255, normalized, and cut out (one square per clip, the first frame's mean);
* per audio view: float32 mono, volume jitter (±0.2), librosa STFT (n_fft 1024, hop 160),
  power + mel filter bank (80 bands) by a matrix product, log, normalized, two frequency masks
  (0-10) and two time masks (0-20) filled with the spectrogram's mean, BYOL-A random resized crop
  (canvas 1.5x the time axis, bicubic back to 80 x 201).

Where the official code differs from the paper in a way that costs the same (the blur's sigma
range passed as an (x, y) pair, cutout multiplying by the mean instead of filling), this anchor does
the paper's version: the cost per clip is the point here, not the bugs.

Threads: one OpenMP/BLAS/MKL thread per worker, set in the environment **before** the worker
process starts (spawned workers import numpy/torch fresh and read it); ``torch`` is set to one
thread inside the worker too. CPU time is counted per worker over the timed batches only
(``/proc/<pid>/stat`` deltas) plus the main thread that collects the batches.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
VIDEO_FPS, SAMPLE_RATE = 16.0, 16000
VIEW_FRAMES, VIEW_SAMPLES = 8, 32000  # 0.5 s of video, 2 s of audio per view
WINDOW_SECONDS = (0.75, 3.0)  # overlapped: 1.5 x the view (two views, 50 % overlap)
CROP, BLUR_KERNEL = 112, 112 // 20 * 2 + 1
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOGMEL_MEAN, LOGMEL_STD = -5.3688107, 4.410007  # the official code's normalization constants


# ----------------------------------------------------------------------------- decoding


def stream_limits(container) -> tuple[float, float, float, float]:
    """(video start, video end, audio start, audio end) in seconds, from the stream headers."""
    limits = []
    for stream in (container.streams.video[0], container.streams.audio[0]):
        base = stream.time_base
        start = float((stream.start_time or 0) * base)
        limits += [start, start + float(stream.duration * base)]
    return tuple(limits)  # type: ignore[return-value]


def draw_windows(limits: tuple[float, float, float, float], rng: random.Random) -> tuple[float, float]:
    """The official snippet sampler when both modalities are long enough: the audio window first,
    then the (shorter) video window uniformly inside it."""
    v_st, v_ft, a_st, a_ft = limits
    v_len, a_len = WINDOW_SECONDS
    a_ss = rng.uniform(max(a_st, v_st), min(a_ft - a_len, v_ft - v_len))
    v_ss = rng.uniform(max(a_ss, v_st), min(a_ss + a_len, v_ft) - v_len)
    return v_ss, a_ss


def decode_video(container, start: float) -> list:
    """The kept frames of the 0.75 s window at 16 fps as RGB PIL images (only those converted)."""
    import av

    stream = container.streams.video[0]
    base, rate = stream.time_base, float(stream.average_rate)
    first = float((stream.start_time or 0) * base)
    count = int(WINDOW_SECONDS[0] * VIDEO_FPS)
    wanted = [int((start + k / VIDEO_FPS - first) * rate) for k in range(count)]
    container.seek(int(wanted[0] / rate * av.time_base))
    frames: list = []
    for frame in container.decode(video=0):
        number = float(frame.pts * base) * rate
        if number < wanted[len(frames)]:
            continue
        image = frame.to_image()
        while len(frames) < count and number >= wanted[len(frames)]:
            frames.append(image)
        if len(frames) == count:
            break
    return frames


def decode_audio(container, start: float) -> np.ndarray:
    """The 3 s window, resampled frame by frame to 16 kHz mono int16, as float64 in [-1, 1]."""
    import av

    resampler = av.AudioResampler(format="s16p", layout="mono", rate=SAMPLE_RATE)
    end = start + WINDOW_SECONDS[1]
    container.seek(int(start * av.time_base))
    chunks, first = [], None
    for frame in container.decode(audio=0):
        t0 = frame.pts * frame.time_base
        if t0 + Fraction(frame.samples, frame.rate) < start:
            continue
        if t0 > end:
            break
        frame.pts = None
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray())
        first = float(t0) if first is None else first
    data = np.concatenate(chunks, axis=1)
    skip, need = int((start - (first or start)) * SAMPLE_RATE), int(WINDOW_SECONDS[1] * SAMPLE_RATE)
    if skip < 0:
        data, skip = np.pad(data, ((0, 0), (-skip, 0))), 0
    if data.shape[1] < skip + need:
        data = np.pad(data, ((0, 0), (0, skip + need - data.shape[1])))
    return data[:, skip : skip + need] / np.iinfo(np.int16).max


# ----------------------------------------------------------------------------- augmentation


def video_view(frames: list, rng: random.Random):
    """One view (list of PIL frames) -> float32 [3, T, 112, 112], one parameter draw for all."""
    import torch
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode, RandomResizedCrop

    top, left, h, w = RandomResizedCrop.get_params(frames[0], [0.08, 1.0], [3 / 4, 4 / 3])
    frames = [TF.resized_crop(f, top, left, h, w, [CROP, CROP], InterpolationMode.BILINEAR) for f in frames]
    if rng.random() < 0.5:
        frames = [f.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for f in frames]
    jitter = [(TF.adjust_brightness, rng.uniform(0.6, 1.4)), (TF.adjust_saturation, rng.uniform(0.6, 1.4)),
              (TF.adjust_hue, rng.uniform(-0.2, 0.2)), (TF.adjust_contrast, rng.uniform(0.6, 1.4))]
    rng.shuffle(jitter)
    for op, factor in jitter:
        frames = [op(f, factor) for f in frames]
    if rng.random() < 0.2:
        frames = [TF.to_grayscale(f) for f in frames]
    if rng.random() < 0.5:
        sigma = rng.uniform(0.1, 2.0)
        frames = [TF.gaussian_blur(f, [BLUR_KERNEL, BLUR_KERNEL], [sigma, sigma]) for f in frames]
    clip = np.zeros((3, len(frames), CROP, CROP))  # float64, as the official ClipToTensor
    for k, f in enumerate(frames):
        pixels = np.asarray(f)
        clip[:, k] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]
    out = torch.from_numpy(clip).float().div(255)
    out = (out - torch.tensor(MEAN).view(3, 1, 1, 1)) / torch.tensor(STD).view(3, 1, 1, 1)
    return cutout(out, rng)


def cutout(clip, rng: random.Random):
    """One square of side 1-20 px at a random centre, filled with the first frame's mean, frame by frame."""
    import torch

    value = clip[:, 0].mean()
    side = rng.randint(1, 20)
    y, x = rng.randrange(CROP), rng.randrange(CROP)
    y0, y1 = max(y - side // 2, 0), min(y + side // 2, CROP)
    x0, x1 = max(x - side // 2, 0), min(x + side // 2, CROP)
    out = []
    for k in range(clip.shape[1]):
        frame = clip[:, k].clone()
        frame[:, y0:y1, x0:x1] = value
        out.append(frame)
    return torch.stack(out, dim=1)


def audio_view(samples: np.ndarray, mel_basis: np.ndarray, rng: random.Random):
    """One view ([1, N] float64 samples) -> float32 [1, 80, 201] augmented log-mel."""
    import librosa
    import torch

    wave = samples.mean(0).astype(np.float32)[:VIEW_SAMPLES]
    wave = np.pad(wave, (0, VIEW_SAMPLES - len(wave)))
    wave = (wave * rng.uniform(0.8, 1.2)).astype(np.float32)
    spec = librosa.stft(wave, n_fft=1024, hop_length=160)
    mel = torch.tensor(np.matmul(mel_basis, np.abs(spec) ** 2 + np.finfo(float).eps))
    out = ((mel + torch.finfo().eps).log()[None] - LOGMEL_MEAN) / LOGMEL_STD  # [1, 80, 201]
    out = mask_axis(out, axis=1, max_width=10, rng=rng)
    out = mask_axis(out, axis=2, max_width=20, rng=rng)
    return resized_crop_spectrogram(out.float(), rng)


def mask_axis(spec, *, axis: int, max_width: int, rng: random.Random, count: int = 2):
    """``count`` bands of width [0, max_width) along ``axis`` set to the spectrogram's mean."""
    import torch

    size = spec.shape[axis]
    widths = torch.tensor([rng.randrange(max_width) for _ in range(count)])[:, None]
    starts = torch.tensor([rng.randrange(max(1, size - int(widths.max()))) for _ in range(count)])[:, None]
    positions = torch.arange(size)[None]
    mask = ((starts <= positions) & (positions < starts + widths)).any(0)
    shape = [1, 1, 1]
    shape[axis] = size
    return spec.masked_fill(mask.view(shape), spec.mean())


def resized_crop_spectrogram(spec, rng: random.Random):
    """BYOL-A random resized crop: the log-mel centred on a canvas 1.5x as long, a random crop
    (0.6-1.5 of each side) resized back bicubically."""
    import torch
    import torch.nn.functional as F

    _, n_mels, frames = spec.shape
    canvas = torch.zeros((1, n_mels, int(frames * 1.5)))
    x0 = (canvas.shape[2] - frames) // 2
    canvas[:, :, x0 : x0 + frames] = spec
    h = int(np.clip(int(rng.uniform(0.6, 1.5) * n_mels), 1, n_mels))
    w = int(np.clip(int(rng.uniform(0.6, 1.5) * frames), 1, canvas.shape[2]))
    i = rng.randint(0, n_mels - h) if n_mels > h else 0
    j = rng.randint(0, canvas.shape[2] - w) if canvas.shape[2] > w else 0
    crop = canvas[:, i : i + h, j : j + w]
    return F.interpolate(crop[None], size=(n_mels, frames), mode="bicubic", align_corners=True)[0]


# ----------------------------------------------------------------------------- dataset


class FaithfulAnchor:
    """torch-style map dataset: item -> {"frames": [2, 3, 8, 112, 112], "audio": [2, 1, 80, 201]}."""

    def __init__(self, paths: list[str], limits: list[tuple[float, float, float, float]], seed: int = 0):
        self.paths, self.limits, self.seed = paths, limits, seed
        self._mel_basis: np.ndarray | None = None

    def __len__(self) -> int:
        return 10**9  # items wrap around the sources

    def mel_basis(self) -> np.ndarray:
        if self._mel_basis is None:  # built once per worker, as the official transform's __init__
            import librosa

            self._mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=1024, n_mels=80, fmin=0, fmax=None)
        return self._mel_basis

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.item_with_stages(item)[0]

    def item_with_stages(self, item: int) -> tuple[dict[str, Any], dict[str, float]]:
        """The item and the CPU seconds of its four stages (this process: PyAV's decoder threads included)."""
        import av
        import torch

        rng = random.Random(self.seed * 1_000_003 + item)
        torch.manual_seed(self.seed * 1_000_003 + item)
        clock, stages = time.process_time(), {}

        def lap(name: str) -> None:
            nonlocal clock
            now = time.process_time()
            stages[name] = stages.get(name, 0.0) + now - clock
            clock = now

        i = item % len(self.paths)
        with av.open(self.paths[i]) as container:
            v_ss, a_ss = draw_windows(stream_limits(container), rng)
            frames = decode_video(container, v_ss)
            lap("video_decode")
            audio = decode_audio(container, a_ss)
            lap("audio_decode")
        video = torch.stack([video_view(frames[:VIEW_FRAMES], rng), video_view(frames[-VIEW_FRAMES:], rng)])
        lap("video_aug")
        basis = self.mel_basis()
        sound = torch.stack([audio_view(audio[:, :VIEW_SAMPLES], basis, rng),
                             audio_view(audio[:, -VIEW_SAMPLES:], basis, rng)])
        lap("audio_aug")
        return {"frames": video, "audio": sound}, stages


def source_limits(paths: list[str]) -> list[tuple[float, float, float, float]]:
    import av

    out = []
    for path in paths:
        with av.open(path) as container:
            out.append(stream_limits(container))
    return out


# ----------------------------------------------------------------------------- running it


@contextlib.contextmanager
def one_thread_environment() -> Iterator[None]:
    """OMP/BLAS/MKL pools of one thread for processes started inside this block (restored after)."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: "1" for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_anchor(paths: list[str], limits: list, *, batch_size: int, batches: int, workers: int,
               seed: int = 0) -> dict[str, float]:
    """Time ``batches`` batches of the anchor DataLoader (``time_dataloader``)."""
    return time_dataloader(FaithfulAnchor(paths, limits, seed=seed), batch_size=batch_size, batches=batches,
                           workers=workers, worker_init=_worker_init)


def time_dataloader(dataset: Any, *, batch_size: int, batches: int, workers: int, worker_init: Any) -> dict[str, float]:
    """Time ``batches`` batches of ``dataset`` in a torch DataLoader after a warm-up of two batches
    per worker (imports, librosa's first call, every worker busy). Workers are spawned (fresh
    interpreters) with one OMP/BLAS/MKL thread set before they start. CPU: each worker's /proc
    delta over the timed window plus the collecting thread's."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn") if workers else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         worker_init_fn=worker_init if workers else None,
                                         multiprocessing_context=context,
                                         prefetch_factor=2 if workers else None)
    with one_thread_environment():
        iterator = iter(loader)
    try:
        for _ in range(2 * max(workers, 1)):
            next(iterator)
        pids = [w.pid for w in getattr(iterator, "_workers", [])]
        cpu0 = [process_cpu_seconds(p) for p in pids]
        main0, wall0 = time.thread_time(), time.perf_counter()
        for _ in range(batches):
            next(iterator)
        wall = time.perf_counter() - wall0
        worker_cpu = sum(process_cpu_seconds(p) - c for p, c in zip(pids, cpu0))
        cpu = worker_cpu + time.thread_time() - main0
    finally:
        del iterator
    clips = batches * batch_size
    return {"clips_per_s": clips / wall, "wall_s": wall, "clips": clips, "cpu_ms_per_clip": 1e3 * cpu / clips}


def _stage_profile(paths: list[str], limits: list, clips: int, seed: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    dataset = FaithfulAnchor(paths, limits, seed=seed)
    dataset.item_with_stages(10**6)  # imports and first calls outside the figures
    totals: dict[str, float] = {}
    for item in range(clips):
        for name, seconds in dataset.item_with_stages(item)[1].items():
            totals[name] = totals.get(name, 0.0) + seconds
    return {name: round(1e3 * seconds / clips, 1) for name, seconds in totals.items()}


def stage_profile(paths: list[str], limits: list, *, clips: int = 16, seed: int = 0) -> dict[str, float]:
    """CPU ms per clip of each stage (video decode, audio decode + resample, video aug, audio aug),
    in one spawned process with one OMP/BLAS/MKL thread: the figures to hold against the official
    loader's profile."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with one_thread_environment():  # the pool starts its process on the first submit
            future = pool.submit(_stage_profile, paths, limits, clips, seed)
        return future.result()


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m crisscross.tools.loader_anchor DIR
    import sys
    from pathlib import Path

    from crisscross.tools.bench_loader import _source_paths

    found = _source_paths(Path(sys.argv[1]) / "manifest.csv")
    lims = source_limits(found)
    print(stage_profile(found, lims))
    print(run_anchor(found, lims, batch_size=16, batches=4, workers=os.cpu_count() or 1))
