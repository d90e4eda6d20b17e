"""Shard builder vs a bare ffmpeg transcode of the same files (16 fps, short side 112, 16 kHz mono).

ours: ``build_shards`` from scratch (plan, decode, resample, MJPEG encode, tar + idx, checksums,
manifest). baseline: one ``ffmpeg`` process per file (imageio-ffmpeg's binary, driven through
ffmpeg-python, arguments as a list) producing the same streams (MJPEG at the same quantizer +
16-bit PCM) into a Matroska file, with as many files in flight as we have workers and one thread
each, as our workers use. Both read the same inputs in the same run. Also reported: clips/s per
core, shard bytes per clip-second, scaling from 1 to N workers, and PCM vs FLAC (size, read cost).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_INPUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="folder of videos (default: the real test videos)")
    parser.add_argument("--demo-clips", type=int, default=0,
                        help="instead of --input, generate this many equal demo clips (balanced load, for scaling)")
    parser.add_argument("--demo-seconds", type=float, default=10.0, help="length of each --demo-clips clip (10)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel workers for both")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    parser.add_argument("--samples-per-shard", type=int, default=2, help="samples per shard of our build (2)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1-worker run")
    parser.add_argument("--no-flac", action="store_true", help="skip the FLAC comparison")


def _media_files(folder: Path) -> list[Path]:
    from crisscross.preprocess.sources import from_folder

    return [Path(item.path) for item in from_folder(folder)]


def _ffmpeg_args(src: Path, dst: Path, fps: int, short_side: int, sample_rate: int, qscale: int) -> list[str]:
    import ffmpeg
    import imageio_ffmpeg

    stream = ffmpeg.input(str(src), threads=1)  # one decoder thread per file, as our workers
    # short side -> short_side, long side keeps the aspect (even), as the builder does
    video = stream.video.filter("fps", fps=fps).filter("scale", f"if(lt(iw,ih),{short_side},-2)",
                                                       f"if(lt(iw,ih),-2,{short_side})")
    out = ffmpeg.output(video, stream.audio, str(dst), vcodec="mjpeg", **{"q:v": qscale, "ac": 1, "ar": sample_rate,
                        "acodec": "pcm_s16le", "threads": 1, "map_metadata": -1})
    args = out.compile(cmd=imageio_ffmpeg.get_ffmpeg_exe())
    return [args[0], "-nostdin", "-loglevel", "error", "-y", *args[1:]]


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (pool workers, ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_ffmpeg(files: list[Path], workers: int, qscale: int = 3) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [_ffmpeg_args(src, Path(tmp) / f"{i}.mkv", 16, 112, 16000, qscale) for i, src in enumerate(files)]
        start, cpu = time.perf_counter(), _cpu_seconds()
        with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait on the processes
            results = list(pool.map(lambda args: subprocess.run(args, capture_output=True), jobs))
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    failed = [files[i].name for i, r in enumerate(results) if r.returncode != 0]
    if failed:
        raise RuntimeError(f"ffmpeg failed on {failed}")
    return elapsed, cpu


def time_ours(src: Path, workers: int, samples_per_shard: int, audio_format: str = "pcm", keep: Path | None = None):
    from crisscross.preprocess.build import build_shards

    out = Path(tempfile.mkdtemp()) / "ds"
    try:
        start, cpu = time.perf_counter(), _cpu_seconds()
        stats = build_shards(src, out, workers=workers, samples_per_shard=samples_per_shard,
                             audio_format=audio_format, progress=False)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
        if keep is not None:
            shutil.copytree(out, keep)
        return elapsed, cpu, stats
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def audio_read_cost(dataset: Path) -> tuple[float, float]:
    """Seconds to decode every sample's audio to float32, and the clip-seconds decoded."""
    from crisscross.shards import format as fmt
    from crisscross.shards.reader import decode_audio, iter_raw, read_dataset

    groups = [g for shard in read_dataset(dataset).shards for _, g in iter_raw(shard)]  # I/O outside the timer
    start = time.perf_counter()
    total = sum(decode_audio(g).size for g in groups if fmt.AUDIO_PCM_EXT in g or fmt.AUDIO_FLAC_EXT in g)
    return time.perf_counter() - start, total / 16000


def _best(fn, repeats: int):
    """The fastest of ``repeats`` runs (wall time first in each result): the least disturbed one."""
    return min((fn() for _ in range(max(1, repeats))), key=lambda r: r[0])


def run(args: argparse.Namespace) -> dict:
    demo_dir = None
    if args.demo_clips:
        from crisscross.tools.demo_data import generate_demo_clips

        demo_dir = Path(tempfile.mkdtemp())
        generate_demo_clips(demo_dir, num_classes=4, clips_per_class=max(1, args.demo_clips // 4),
                            seconds=args.demo_seconds, size=(320, 240))
        args.input = demo_dir
    try:
        return _run(args)
    finally:
        if demo_dir is not None:
            shutil.rmtree(demo_dir, ignore_errors=True)


def _run(args: argparse.Namespace) -> dict:
    files = _media_files(args.input)
    if not files:
        raise SystemExit(f"no media files under {args.input}")
    print(f"bench shards: {len(files)} files from {args.input}, {args.workers} workers, best of {args.repeats}")
    time_ffmpeg(files[:1], 1)  # warm the page cache and the binary once
    base, base_cpu = _best(lambda: time_ffmpeg(files, args.workers), args.repeats)
    tmp = Path(tempfile.mkdtemp())
    try:
        ours, ours_cpu, stats = _best(lambda: time_ours(args.input, args.workers, args.samples_per_shard), args.repeats)
        figures = {
            "ours": round(ours, 3), "baseline": round(base, 3), "ratio": round(ours / base, 3), "unit": "s",
            "ours_cpu_s": round(ours_cpu, 3), "baseline_cpu_s": round(base_cpu, 3),
            "cpu_ratio": round(ours_cpu / base_cpu, 3), "load_average_1min": round(os.getloadavg()[0], 2),
            "device": f"cpu, {args.workers} workers of {os.cpu_count()} cores",
            "files": len(files), "samples": stats.samples, "errors": stats.errors,
            "clip_seconds": round(stats.seconds, 2),
            "clips_per_s_per_core": round(stats.samples / ours / args.workers, 3),
            "media_s_per_s_per_core": round(stats.seconds / ours / args.workers, 2),
            "shard_bytes_per_clip_second": round(stats.bytes / stats.seconds),
        }
        print(f"ours {ours:.2f} s ({ours_cpu:.2f} CPU s) vs ffmpeg {base:.2f} s ({base_cpu:.2f} CPU s) "
              f"-> ratio {ours / base:.2f} wall, {ours_cpu / base_cpu:.2f} CPU")
        if not args.no_scaling and args.workers > 1:
            ours1 = _best(lambda: time_ours(args.input, 1, args.samples_per_shard), args.repeats)[0]
            base1 = _best(lambda: time_ffmpeg(files, 1), args.repeats)[0]
            figures.update(ours_1_worker=round(ours1, 3), baseline_1_worker=round(base1, 3),
                           speedup_ours=round(ours1 / ours, 2), speedup_baseline=round(base1 / base, 2))
            print(f"1 worker: ours {ours1:.2f} s, ffmpeg {base1:.2f} s; speed-up x{ours1 / ours:.2f} / x{base1 / base:.2f}")
        if not args.no_flac:
            figures.update(_pcm_vs_flac(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def _pcm_vs_flac(args: argparse.Namespace, tmp: Path) -> dict:
    from crisscross.shards.reader import read_dataset

    result = {}
    for audio_format in ("pcm", "flac"):
        keep = tmp / audio_format
        time_ours(args.input, args.workers, args.samples_per_shard, audio_format, keep=keep)
        rows = read_dataset(keep).manifest
        ext = "audio.pcm" if audio_format == "pcm" else "audio.flac"
        audio_bytes = _component_bytes(keep, ext)
        seconds = sum(r["audio_samples"] for r in rows) / 16000
        read_s, decoded_s = _best(lambda keep=keep: audio_read_cost(keep), args.repeats)
        result[f"{audio_format}_audio_bytes_per_clip_second"] = round(audio_bytes / seconds)
        result[f"{audio_format}_read_ms_per_clip_minute"] = round(1e3 * read_s / decoded_s * 60, 3)
        print(f"{audio_format}: {audio_bytes / seconds / 1e3:.1f} kB per audio second, "
              f"read {1e3 * read_s / decoded_s * 60:.2f} ms per minute of audio")
    return result


def _component_bytes(dataset: Path, ext: str) -> int:
    from crisscross.shards.reader import iter_raw, read_dataset

    return sum(len(g[ext]) for shard in read_dataset(dataset).shards for _, g in iter_raw(shard) if ext in g)
