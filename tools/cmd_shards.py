"""``crisscross shards build|inspect|verify|merge``: thin wrappers over the preprocess/shards stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("shards", help="build, inspect, verify or merge WebDataset shards")
    shards_sub = parser.add_subparsers(dest="shards_command", required=True)
    _register_build(shards_sub)
    _register_merge(shards_sub)
    _register_inspect(shards_sub)
    _register_verify(shards_sub)


def _register_build(sub) -> None:
    from crisscross.preprocess.build import REQUIRE_CHOICES
    from crisscross.preprocess.sources import ADAPTERS

    p = sub.add_parser("build", help="raw videos/audio -> shards (resumable)")
    p.add_argument("input", help="a folder, a manifest (csv/tsv/jsonl/parquet) or a dataset root")
    p.add_argument("--out", required=True, help="dataset directory (created; rerun to resume)")
    p.add_argument("--name", default="data", help="shard file prefix: NAME-000000.tar")
    p.add_argument("--format", dest="adapter", default="auto", choices=ADAPTERS, help="input layout")
    p.add_argument("--split", type=int, default=1, help="UCF101/HMDB51 official split number")
    p.add_argument("--video-root", default=None, help="Kinetics: folder holding the videos (default: the CSV's folder)")
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--short-side", type=int, default=112)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--clip-seconds", type=float, default=None, help="cut sources into clips of this length")
    p.add_argument("--min-seconds", type=float, default=1.0, help="reject samples shorter than this")
    p.add_argument("--require", default="any", choices=REQUIRE_CHOICES,
                   help="modalities a kept sample must have (any: keep what exists)")
    p.add_argument("--audio-format", default="pcm", choices=("pcm", "flac"))
    p.add_argument("--jpeg-qscale", type=int, default=3, help="MJPEG quantizer 2 (best)..31")
    p.add_argument("--shard-size", type=float, default=1000.0, help="target shard size in MB (1e6 bytes)")
    p.add_argument("--samples-per-shard", type=int, default=None, help="fixed count (overrides --shard-size)")
    p.add_argument("--seed", type=int, default=0, help="cross-shard shuffle seed")
    p.add_argument("--item-timeout", type=float, default=600.0, help="seconds per source before it is an error")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--engine", default="local", choices=("local", "ray"))
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--num-tasks", type=int, default=1, help="job array size (then run `shards merge`)")
    p.add_argument("--task-index", type=int, default=0, help="this job array task (0-based)")
    p.add_argument("--isolate", action="store_true",
                   help="decode each source in its own process (survives decoder crashes and hangs; slower)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from crisscross.preprocess.build import build_shards

    if not 0 <= args.task_index < args.num_tasks:
        raise SystemExit("--task-index must be in [0, --num-tasks)")
    stats = build_shards(
        args.input, args.out, name=args.name, fps=args.fps, short_side=args.short_side,
        sample_rate=args.sample_rate, clip_seconds=args.clip_seconds, shard_size_bytes=int(args.shard_size * 1e6),
        workers=args.workers, seed=args.seed, audio_format=args.audio_format, engine=args.engine,
        num_tasks=args.num_tasks, task_index=args.task_index, address=args.address,
        progress=not args.no_progress, isolate=args.isolate, min_seconds=args.min_seconds, require=args.require,
        jpeg_qscale=args.jpeg_qscale, samples_per_shard=args.samples_per_shard, adapter=args.adapter,
        split=args.split, item_timeout_s=args.item_timeout,
        video_root=str(Path(args.video_root).resolve()) if args.video_root else None)
    print(stats.summary())
    return 0


def _register_merge(sub) -> None:
    p = sub.add_parser("merge", help="after a job array: write manifest/errors/dataset.json")
    p.add_argument("out", help="dataset directory all tasks wrote to")
    p.set_defaults(func=_merge)


def _merge(args: argparse.Namespace) -> int:
    from crisscross.preprocess.build import merge

    print(merge(args.out).summary())
    return 0


def _register_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="summary of a dataset; dump a sample's frames (PNG) and audio (WAV)")
    p.add_argument("dataset", help="dataset directory")
    p.add_argument("--key", default=None, help="sample to show / dump (default: the first)")
    p.add_argument("--dump", default=None, help="folder to write frame_XXXX.png and audio.wav into")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from crisscross.shards.inspect import dump_sample, summarize

    summary = summarize(args.dataset)
    print(json.dumps(summary, indent=1, sort_keys=True) if args.json else summary["text"])
    if args.key or args.dump:
        shown = dump_sample(args.dataset, args.key, args.dump)
        print(json.dumps(shown, indent=1, sort_keys=True))
    return 0


def _register_verify(sub) -> None:
    p = sub.add_parser("verify", help="re-read every shard and check it against the manifest")
    p.add_argument("dataset", help="dataset directory")
    p.add_argument("--no-decode", action="store_true", help="check structure only, skip decoding video")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from crisscross.shards.inspect import verify_dataset

    problems = verify_dataset(args.dataset, decode=not args.no_decode)
    for line in problems:
        print("PROBLEM:", line)
    print(f"verify: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0
