"""DALI view loader vs an anchor-style PyAV + torchvision DataLoader, on the same source videos.

ours: ``build_train_loader`` over shards built (untimed) from the sources: two views of both
modalities, every pretraining augmentation on, ``mild`` relaxation, 8 frames x 112^2 and
2 s log-mel, on ``--device`` (DALI CPU graph here). baseline: a torch DataLoader in the style of
the official code: per clip it opens the SOURCE mp4 with PyAV, seeks, decodes the 0.75 s video and
3 s audio windows of ``mild`` (resampled to 16 fps / 16 kHz), cuts the two views, and augments
each view with torchvision on the CPU (same parameters for all frames of a view) and the audio with
librosa + numpy; at its best settings (one worker per core, one OMP/BLAS thread per worker).
Both run in the same process, one after the other, on the same clips. Also reported: CPU
milliseconds per clip (all threads and workers), and our loader on 10 s vs 300 s sources.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MILD_VIDEO_WINDOW, MILD_AUDIO_WINDOW = 0.75, 3.0  # official mild windows (two 50 %-overlapping views)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=16, help="number of generated 10 s source clips")
    parser.add_argument("--source-size", default="320x240", help="WxH of the generated sources (H.264 + AAC, 25 fps)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch, both loaders (16)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per loader (after one warm-up batch)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="anchor DataLoader workers (1 per core)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="DALI threads for ours")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] for ours")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="length of the long sources (0: skip)")
    parser.add_argument("--long-clips", type=int, default=4, help="long sources (also the batch size of the length comparison)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep sources and shards here (default: a temp dir)")


# ----------------------------------------------------------------------------- data


def _sources(folder: Path, *, count: int, seconds: float, size: tuple[int, int]) -> Path:
    """Generated demo clips (H.264 + AAC mp4, 25 fps); reused when already there."""
    from crisscross.tools.demo_data import generate_demo_clips

    manifest = folder / "manifest.csv"
    if not manifest.exists():
        classes = min(4, count)
        generate_demo_clips(folder, num_classes=classes, clips_per_class=max(1, count // classes), seconds=seconds,
                            fps=25, size=size, sample_rate=44100, seed=0)
    return manifest


def _shards(manifest: Path, out: Path) -> Path:
    from crisscross.preprocess.build import build_shards

    if not (out / "dataset.json").exists():
        build_shards(manifest, out, name="bench", progress=False, workers=min(2, os.cpu_count() or 1))
    return out


def _source_paths(manifest: Path) -> list[str]:
    import csv

    with open(manifest, newline="") as f:
        return [str(manifest.parent / row["path"]) for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- timing


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children (DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _time_batches(batches, count: int, batch_size: int) -> dict[str, float]:
    """Warm up with one batch, then time ``count`` batches (wall and CPU)."""
    iterator = iter(batches)
    next(iterator)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for _ in range(count):
        next(iterator)
    wall = time.perf_counter() - wall0
    clips = count * batch_size
    return {"clips_per_s": clips / wall, "wall_s": wall, "clips": clips, "cpu_s": _cpu_seconds() - cpu0}


def _endless(loader):
    while True:
        yield from loader


def _ours(shards: Path, args: argparse.Namespace, batch_size: int | None = None, batches: int | None = None) -> dict[str, float]:
    from crisscross.shards.loader import build_train_loader

    device = args.device if args.device != "cuda" else "cuda:0"
    batch_size = batch_size or args.batch_size
    loader = build_train_loader({"shards": str(shards), "relaxation": "mild", "num_threads": args.threads},
                                batch_size=batch_size, device=device, seed=0)
    batches_iter = _endless(loader)
    next(batches_iter)  # pipelines built and warm before the feed counters are read
    before = loader.timing()
    result = _time_batches(batches_iter, batches or args.batches, batch_size)
    result["cpu_ms_per_clip"] = 1e3 * result.pop("cpu_s") / result["clips"]
    result.update(_feed_cost(before, loader.timing(), result["wall_s"], batches or args.batches))
    return result


def _feed_cost(before: dict[str, float], after: dict[str, float], wall: float, timed: int) -> dict[str, float]:
    """What a batch costs in Python on the thread that iterates the loader (in training: the
    prefetch thread, which competes with the training loop for the GIL): JPEG slicing and
    ``feed_input`` calls, per batch, and as a share of the timed wall time."""
    pulled = max(after["batches"] - before["batches"], 1)  # the timed batches and one warm-up
    per_batch = (after["feed_s"] - before["feed_s"]) / pulled
    return {"feed_ms_per_batch": 1e3 * per_batch, "feed_share": per_batch * timed / wall,
            "work_ms_per_batch": 1e3 * (after["work_s"] - before["work_s"]) / pulled}


# ----------------------------------------------------------------------------- anchor


def _decode_windows(path: str, start: float) -> tuple[np.ndarray, np.ndarray]:
    """The official code's per-sample work: PyAV seek + decode of the source's video window
    (as 16 fps RGB frames at full source resolution) and audio window (16 kHz mono float)."""
    import av

    with av.open(path) as container:
        vstream = container.streams.video[0]
        wanted = [start + k / 16.0 for k in range(int(MILD_VIDEO_WINDOW * 16))]
        container.seek(int(start / vstream.time_base), stream=vstream, backward=True, any_frame=False)
        frames, last = [], None
        for frame in container.decode(vstream):
            t = float(frame.pts * vstream.time_base)
            while wanted and t > wanted[0] + 1e-6 and last is not None:  # the frame shown at wanted[0]
                frames.append(last)
                wanted.pop(0)
            if not wanted:
                break
            last = frame.to_ndarray(format="rgb24")
        while wanted and last is not None:
            frames.append(last)
            wanted.pop(0)
        astream = container.streams.audio[0]
        container.seek(int(start / astream.time_base), stream=astream, backward=True, any_frame=False)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        need = int(MILD_AUDIO_WINDOW * 16000)
        chunks, have, first_t = [], 0, None
        for frame in container.decode(astream):
            if first_t is None:
                first_t = float(frame.pts * astream.time_base)
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                have += len(chunk)
            if have >= need + int((start - (first_t or 0.0)) * 16000) + 1:
                break
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        skip = max(0, int(round((start - (first_t or 0.0)) * 16000)))
        audio = audio[skip : skip + need]
        audio = np.pad(audio, (0, need - len(audio)))
    return np.stack(frames), audio


class AnchorDataset:
    """Two ``mild`` views per clip, decoded from the source and augmented on the CPU."""

    def __init__(self, paths: list[str], durations: list[float], seed: int = 0):
        self.paths, self.durations, self.seed = paths, durations, seed

    def __len__(self) -> int:
        return 10**9  # sampled with replacement by index modulo the number of clips

    def __getitem__(self, item: int) -> dict[str, Any]:
        import torch

        rng = np.random.default_rng((self.seed, item))
        i = item % len(self.paths)
        start = float(rng.uniform(0.0, max(self.durations[i] - MILD_AUDIO_WINDOW, 0.0)))
        frames, audio = _decode_windows(self.paths[i], start)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # [T, C, H, W] uint8
        views = {}
        for v, (f0, a0) in enumerate(((0, 0), (4, 16000)), start=1):
            views[f"v{v}"] = _anchor_video_aug(video[f0 : f0 + 8], rng)
            views[f"a{v}"] = _anchor_audio_aug(audio[a0 : a0 + 32000], rng)
        return views


def _anchor_video_aug(clip, rng: np.random.Generator):
    """torchvision v2 on a Video tensor: one parameter draw for all frames of the view."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD

    torch.manual_seed(int(rng.integers(2**31)))
    transform = v2.Compose([
        v2.RandomResizedCrop(112, scale=(0.08, 1.0), antialias=False),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.4, 0.4, 0.4, 0.2),
        v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(11, sigma=(0.1, 2.0))], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
    ])
    out = transform(tv_tensors.Video(clip))
    side = int(rng.integers(1, 21))  # cutout with the first frame's mean (the paper)
    y, x = (int(c) for c in rng.integers(0, 112, size=2))
    fill = out[0].mean(dim=(1, 2)).view(3, 1, 1)
    y0, y1, x0, x1 = max(0, y - side // 2), min(112, y + side - side // 2), max(0, x - side // 2), min(112, x + side - side // 2)
    out[:, :, y0:y1, x0:x1] = fill
    out = v2.functional.normalize(out, KINETICS_MEAN, KINETICS_STD)
    return out.permute(1, 0, 2, 3).contiguous()  # [C, T, H, W]


def _anchor_audio_aug(wave: np.ndarray, rng: np.random.Generator):
    import librosa
    import torch
    import torch.nn.functional as F

    from crisscross.shards.augment import LOG_EPS, LOGMEL_MEAN, LOGMEL_STD

    wave = wave * rng.uniform(0.8, 1.2)
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=1024, hop_length=160, n_mels=80, power=2.0)
    spec = (np.log(mel + LOG_EPS)[:, :200] - LOGMEL_MEAN) / LOGMEL_STD
    for axis, max_width in ((0, 10), (0, 10), (1, 20), (1, 20)):
        width = int(rng.integers(0, max_width + 1))
        start = int(rng.integers(0, spec.shape[axis] - width + 1))
        if axis == 0:
            spec[start : start + width] = 0
        else:
            spec[:, start : start + width] = 0
    canvas = np.zeros((80, 300), np.float32)  # BYOL-A random resized crop
    canvas[:, 50:250] = spec
    h = int(np.clip(rng.uniform(0.6, 1.5) * 80, 1, 80))
    w = int(np.clip(rng.uniform(0.6, 1.5) * 200, 1, 300))
    i, j = int(rng.integers(0, 80 - h + 1)), int(rng.integers(0, 300 - w + 1))
    crop = torch.from_numpy(canvas[i : i + h, j : j + w].copy())[None, None]
    return F.interpolate(crop, size=(80, 200), mode="bicubic", align_corners=True)[0]


def _one_thread_per_worker(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def _anchor(manifest: Path, args: argparse.Namespace) -> dict[str, float]:
    import av
    import torch

    paths = _source_paths(manifest)
    durations = []
    for path in paths:
        with av.open(path) as c:
            durations.append(float(c.duration / av.time_base))
    loader = torch.utils.data.DataLoader(AnchorDataset(paths, durations), batch_size=args.batch_size,
                                         num_workers=args.workers, worker_init_fn=_one_thread_per_worker,
                                         prefetch_factor=2 if args.workers else None, persistent_workers=False)
    iterator = iter(loader)
    for _ in range(max(1, args.workers)):  # every worker past its imports and librosa's JIT warm-up
        next(iterator)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    wall = time.perf_counter() - wall0
    del iterator  # workers exit, so their CPU time lands in RUSAGE_CHILDREN
    time.sleep(0.5)
    clips = args.batches * args.batch_size
    # workers ran ahead by their prefetch (2 batches each); charge their CPU per clip produced
    produced = clips + args.batch_size * 2 * max(args.workers, 1)
    cpu = _cpu_seconds() - cpu0
    return {"clips_per_s": clips / wall, "wall_s": wall, "clips": clips, "cpu_ms_per_clip": 1e3 * cpu / produced}


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    width, height = (int(v) for v in args.source_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest = _sources(work / "src10", count=args.clips, seconds=10.0, size=(width, height))
        shards = _shards(manifest, work / "shards10")
        torch.set_num_threads(1)
        ours = _ours(shards, args)
        print(f"ours (DALI {args.device}): {ours['clips_per_s']:.1f} clips/s, {ours['cpu_ms_per_clip']:.1f} CPU ms/clip", flush=True)
        anchor = _anchor(manifest, args)
        print(f"anchor (PyAV + torchvision, {args.workers} workers): {anchor['clips_per_s']:.1f} clips/s, "
              f"{anchor['cpu_ms_per_clip']:.1f} CPU ms/clip", flush=True)
        long = None
        if args.long_seconds > 0:
            # Same batch size for both lengths; long sources are generated small (160x120) to keep
            # the untimed generation short: our loader reads 112 px shards either way.
            long_manifest = _sources(work / "src_long", count=args.long_clips, seconds=args.long_seconds, size=(160, 120))
            short_manifest = _sources(work / "src_short", count=args.long_clips, seconds=10.0, size=(160, 120))
            # as many clips as the main measurement, in smaller batches
            batches = args.batches * max(1, args.batch_size // args.long_clips)
            long_ours = _ours(_shards(long_manifest, work / "shards_long"), args, batch_size=args.long_clips, batches=batches)
            short_ours = _ours(_shards(short_manifest, work / "shards_short"), args, batch_size=args.long_clips, batches=batches)
            long = {"seconds": args.long_seconds, "batch_size": args.long_clips,
                    "ours_10s_clips_per_s": round(short_ours["clips_per_s"], 2),
                    "ours_long_clips_per_s": round(long_ours["clips_per_s"], 2),
                    "ours_10s_cpu_ms_per_clip": round(short_ours["cpu_ms_per_clip"], 2),
                    "ours_long_cpu_ms_per_clip": round(long_ours["cpu_ms_per_clip"], 2),
                    "cpu_ratio_long_vs_10s": round(long_ours["cpu_ms_per_clip"] / short_ours["cpu_ms_per_clip"], 3)}
            print(f"ours, 10 s vs {args.long_seconds:.0f} s sources: {short_ours['clips_per_s']:.1f} vs "
                  f"{long_ours['clips_per_s']:.1f} clips/s, {short_ours['cpu_ms_per_clip']:.1f} vs "
                  f"{long_ours['cpu_ms_per_clip']:.1f} CPU ms/clip", flush=True)
    frames_per_clip = 2 * 8
    return {
        "ours": round(ours["clips_per_s"], 2),
        "baseline": round(anchor["clips_per_s"], 2),
        "ratio": round(ours["clips_per_s"] / anchor["clips_per_s"], 2),
        "unit": "clips/s (2 views x (8x112^2 video + 2 s log-mel), all augmentations)",
        "device": f"{args.device} ({os.cpu_count()} cores)",
        "ours_cpu_ms_per_clip": round(ours["cpu_ms_per_clip"], 2),
        "baseline_cpu_ms_per_clip": round(anchor["cpu_ms_per_clip"], 2),
        "cpu_ratio": round(anchor["cpu_ms_per_clip"] / ours["cpu_ms_per_clip"], 2),
        "ours_augmented_frames_per_s": round(ours["clips_per_s"] * frames_per_clip, 1),
        # Python on the loader's feeding thread per batch (GIL held), and its share of batch time
        "feed_ms_per_batch": round(ours["feed_ms_per_batch"], 2), "feed_share": round(ours["feed_share"], 4),
        "feed_ms_per_clip": round(ours["feed_ms_per_batch"] / args.batch_size, 3),
        "long_sources": long,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": {"clips": args.clips, "source_size": args.source_size, "batch_size": args.batch_size,
                   "batches": args.batches, "workers": args.workers, "threads": args.threads},
    }
