"""DALI view loader vs a faithful anchor of the official CrissCross loader, on the same source videos.

ours: ``build_train_loader`` over shards built (untimed) from the sources: two views of both
modalities, every pretraining augmentation on, ``mild`` relaxation, 8 frames x 112^2 and
2 s log-mel, on ``--device`` (DALI CPU graph here). baseline: ``tools/loader_anchor.py``, the
official loader's per-clip work (PyAV seek + decode of the source, only the kept frames converted,
PIL augmentations, librosa log-mel) in a torch DataLoader with one spawned worker per core and
one OMP/BLAS/MKL thread per worker set before the workers start. The two run alternately
``--repeats`` times in one process on the same clips (the machine may be shared: ratios are taken
within a repeat, the medians reported). CPU milliseconds per clip count the timed batches only:
ours, this process's CPU (all its threads) over the timed window; the anchor, each worker's CPU
delta over the window plus the collecting thread. Also: the anchor's CPU per stage (one process,
one thread), and our loader on 10 s vs 300 s sources. ``--official DIR``: the official loader
itself, imported from the user's checkout (``tools/official_loader.py``), measured the same two
ways and alternating with the anchor, to check the anchor against it.

Ours runs ``cores + 1`` DALI threads by default: the loader's calling thread sleeps while DALI's
pool runs the work pipeline (simple executor), so a thread per core leaves a core idle at times.
Measured on 2 cores, alternating in one process: 2 threads 116 clips/s and 12.5 CPU ms/clip,
3 threads 130 clips/s and 12.2 CPU ms/clip. The anchor keeps one worker per core: 3 workers
instead of 2 gave the same clips/s (27.6 vs 27.4) for 14 % more CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=16, help="number of generated 10 s source clips")
    parser.add_argument("--source-size", default="320x240", help="WxH of the generated sources (H.264 + AAC, 25 fps)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch, both loaders (16)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per loader and repeat (after warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="ours/anchor measurements, alternating (medians reported)")
    parser.add_argument("--stage-clips", type=int, default=16, help="clips for the anchor's per-stage CPU profile (0: skip)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="anchor (and official) DataLoader workers (1 per core: on 2 cores a third worker gave "
                             "the same clips/s for 14 %% more CPU)")
    parser.add_argument("--threads", type=int, default=(os.cpu_count() or 1) + 1,
                        help="DALI threads for ours (cores + 1: the loader's calling thread sleeps while DALI's "
                             "thread pool runs the work pipeline (simple executor), so one thread more than the "
                             "cores keeps every core busy; the anchor keeps one worker per core)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] for ours")
    parser.add_argument("--short-sides", default="112,160",
                        help="shard short sides (px) for the input-fidelity comparison of ours (empty: skip); "
                             "the crop stays 112")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="length of the long sources (0: skip)")
    parser.add_argument("--long-clips", type=int, default=4, help="long sources (also the batch size of the length comparison)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep sources and shards here (default: a temp dir)")
    parser.add_argument("--official", type=Path, default=None, metavar="DIR",
                        help="also run the official CrissCross loader from this checkout of "
                             "github.com/pritamqu/CrissCross (the directory that contains crisscross/train/datasets; "
                             "imported at run time, tools/official_loader.py): its per-stage CPU and its DataLoader, "
                             "alternating with the anchor, to check the anchor against it")


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


def _shards(manifest: Path, out: Path, short_side: int | None = None) -> Path:
    from crisscross.preprocess.build import build_shards

    if not (out / "dataset.json").exists():
        sizes = {} if short_side is None else {"short_side": short_side}
        build_shards(manifest, out, name="bench", progress=False, workers=min(2, os.cpu_count() or 1), **sizes)
    return out


def _fidelity(manifest: Path, work: Path, args: argparse.Namespace, seconds: float) -> list[dict[str, float]] | None:
    """Ours on shards of each ``--short-sides`` (the crop stays 112): cost and shard bytes per
    second of clip, alternating the sizes twice (medians)."""
    sides = [int(v) for v in args.short_sides.split(",") if v.strip()]
    if not sides:
        return None
    from crisscross.shards.format import DEFAULT_SHORT_SIDE

    folders = {side: _shards(manifest, work / ("shards10" if side == DEFAULT_SHORT_SIDE else f"shards_{side}px"), short_side=side)
               for side in sides}
    runs: dict[int, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(2):
        for side in sides:
            runs[side].append(_ours(folders[side], args))
    rows = []
    for side in sides:
        stored = sum(f.stat().st_size for f in folders[side].glob("*.tar"))
        rows.append({"short_side": side,
                     "clips_per_s": round(statistics.median(r["clips_per_s"] for r in runs[side]), 2),
                     "cpu_ms_per_clip": round(statistics.median(r["cpu_ms_per_clip"] for r in runs[side]), 2),
                     "shard_bytes_per_clip_second": round(stored / (args.clips * seconds))})
        print(f"ours on {side} px shards: {rows[-1]['clips_per_s']:.1f} clips/s, {rows[-1]['cpu_ms_per_clip']:.1f} CPU ms/clip, "
              f"{rows[-1]['shard_bytes_per_clip_second'] / 1e3:.1f} kB per clip-second", flush=True)
    return rows


def _source_paths(manifest: Path) -> list[str]:
    import csv

    with open(manifest, newline="") as f:
        return [str(manifest.parent / row["path"]) for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------- timing


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (DALI's included); no children (the anchor's
    workers of an earlier repeat may exit during our window)."""
    return time.process_time()


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


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    width, height = (int(v) for v in args.source_size.lower().split("x"))
    official_root = getattr(args, "official", None)
    if official_root is not None:
        from crisscross.tools.official_loader import official_train_dir

        official_train_dir(official_root)  # a wrong path fails before the sources are generated
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        manifest = _sources(work / "src10", count=args.clips, seconds=10.0, size=(width, height))
        shards = _shards(manifest, work / "shards10")
        torch.set_num_threads(1)
        repeats = _alternate(manifest, shards, args)
        stages = _anchor_stages(manifest, args)
        official = _official(manifest, official_root, args) if official_root is not None else None
        fidelity = _fidelity(manifest, work, args, seconds=10.0)
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
    ours = {key: statistics.median(r["ours"][key] for r in repeats) for key in repeats[0]["ours"]}
    anchor = {key: statistics.median(r["anchor"][key] for r in repeats) for key in repeats[0]["anchor"]}
    return {
        "ours": round(ours["clips_per_s"], 2),
        "baseline": round(anchor["clips_per_s"], 2),
        # ratios within a repeat (same load), median over repeats
        "ratio": round(statistics.median(r["ours"]["clips_per_s"] / r["anchor"]["clips_per_s"] for r in repeats), 2),
        "unit": "clips/s (2 views x (8x112^2 video + 2 s log-mel), all augmentations)",
        "baseline_name": "faithful anchor of the official loader (tools/loader_anchor.py)",
        "device": f"{args.device} ({os.cpu_count()} cores)",
        "ours_cpu_ms_per_clip": round(ours["cpu_ms_per_clip"], 2),
        "baseline_cpu_ms_per_clip": round(anchor["cpu_ms_per_clip"], 2),
        "cpu_ratio": round(statistics.median(r["anchor"]["cpu_ms_per_clip"] / r["ours"]["cpu_ms_per_clip"] for r in repeats), 2),
        "baseline_stage_cpu_ms_per_clip": stages,
        # --official DIR: the official loader itself, alternating with the anchor (null without it)
        "official": None if official is None else {key: value for key, value in official.items()
                                                   if key != "anchor_vs_official_cpu"},
        "anchor_vs_official_cpu": None if official is None else official["anchor_vs_official_cpu"],
        # ours against the official loader itself: medians of separate runs (not within one repeat)
        "ours_vs_official": None if official is None else {
            "ratio": round(ours["clips_per_s"] / official["clips_per_s"], 2),
            "cpu_ratio": round(official["cpu_ms_per_clip"] / ours["cpu_ms_per_clip"], 2)},
        "repeats": [{"ours_clips_per_s": round(r["ours"]["clips_per_s"], 2), "baseline_clips_per_s": round(r["anchor"]["clips_per_s"], 2),
                     "ours_cpu_ms_per_clip": round(r["ours"]["cpu_ms_per_clip"], 2),
                     "baseline_cpu_ms_per_clip": round(r["anchor"]["cpu_ms_per_clip"], 2)} for r in repeats],
        "ours_augmented_frames_per_s": round(ours["clips_per_s"] * frames_per_clip, 1),
        # Python on the loader's feeding thread per batch (GIL held), and its share of batch time
        "feed_ms_per_batch": round(ours["feed_ms_per_batch"], 2), "feed_share": round(ours["feed_share"], 4),
        "feed_ms_per_clip": round(ours["feed_ms_per_batch"] / args.batch_size, 3),
        "long_sources": long,
        "input_fidelity": fidelity,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": {"clips": args.clips, "source_size": args.source_size, "batch_size": args.batch_size,
                   "batches": args.batches, "repeats": args.repeats, "workers": args.workers, "threads": args.threads,
                   "official": None if official_root is None else str(official_root)},
    }


def _alternate(manifest: Path, shards: Path, args: argparse.Namespace) -> list[dict[str, dict[str, float]]]:
    """ours, anchor, ours, anchor, ...: each pair close in time, so their ratio sees one load."""
    from crisscross.tools.loader_anchor import run_anchor, source_limits

    paths = _source_paths(manifest)
    limits = source_limits(paths)
    repeats = []
    for repeat in range(max(1, args.repeats)):
        ours = _ours(shards, args)
        anchor = run_anchor(paths, limits, batch_size=args.batch_size, batches=args.batches,
                            workers=args.workers, seed=repeat)
        print(f"repeat {repeat + 1}: ours (DALI {args.device}) {ours['clips_per_s']:.1f} clips/s, "
              f"{ours['cpu_ms_per_clip']:.1f} CPU ms/clip; anchor ({args.workers} workers) "
              f"{anchor['clips_per_s']:.1f} clips/s, {anchor['cpu_ms_per_clip']:.1f} CPU ms/clip", flush=True)
        repeats.append({"ours": ours, "anchor": anchor})
    return repeats


def _anchor_stages(manifest: Path, args: argparse.Namespace) -> dict[str, float] | None:
    """The anchor's CPU ms per clip by stage, one process with one thread (to hold against the
    official loader's own profile, docs/shards.md)."""
    if args.stage_clips <= 0:
        return None
    from crisscross.tools.loader_anchor import source_limits, stage_profile

    paths = _source_paths(manifest)
    stages = stage_profile(paths, source_limits(paths), clips=args.stage_clips)
    stages["total"] = round(sum(stages.values()), 1)
    print("anchor CPU ms per clip by stage: " + ", ".join(f"{k} {v}" for k, v in stages.items()), flush=True)
    return stages


def _official(manifest: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The official loader from the user's checkout: its CPU per stage (one process, one thread,
    as the anchor's), then its DataLoader and the anchor's alternately ``--repeats`` times, so each
    pair sees one load; ``anchor_vs_official_cpu`` is the median of the within-pair CPU ratios."""
    from crisscross.tools import official_loader
    from crisscross.tools.loader_anchor import run_anchor, source_limits

    paths = _source_paths(manifest)
    limits = source_limits(paths)
    stages = official_loader.stage_profile(root, paths, clips=args.stage_clips) if args.stage_clips > 0 else None
    pairs = []
    for repeat in range(max(1, args.repeats)):
        official = official_loader.run_official(root, paths, batch_size=args.batch_size, batches=args.batches,
                                                workers=args.workers, seed=repeat)
        anchor = run_anchor(paths, limits, batch_size=args.batch_size, batches=args.batches, workers=args.workers,
                            seed=repeat)
        pairs.append({f"{name}_{key}": run[key] for name, run in (("official", official), ("anchor", anchor))
                      for key in ("clips_per_s", "cpu_ms_per_clip")})
    result = {"clips_per_s": round(statistics.median(p["official_clips_per_s"] for p in pairs), 2),
              "cpu_ms_per_clip": round(statistics.median(p["official_cpu_ms_per_clip"] for p in pairs), 2),
              "stage_cpu_ms_per_clip": stages,
              "repeats": [{key: round(value, 2) for key, value in p.items()} for p in pairs],
              "anchor_vs_official_cpu": round(statistics.median(
                  p["anchor_cpu_ms_per_clip"] / p["official_cpu_ms_per_clip"] for p in pairs), 3)}
    anchor_cpu = statistics.median(p["anchor_cpu_ms_per_clip"] for p in pairs)
    staged = "" if stages is None else "; by stage " + ", ".join(f"{k} {v}" for k, v in stages.items())
    print(f"official loader ({args.workers} workers): {result['clips_per_s']:.1f} clips/s, "
          f"{result['cpu_ms_per_clip']:.1f} CPU ms/clip; anchor alongside {anchor_cpu:.1f} CPU ms/clip, "
          f"anchor/official CPU {result['anchor_vs_official_cpu']:.2f}{staged}", flush=True)
    return result
