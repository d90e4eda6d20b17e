"""``crisscross shards build|inspect|verify|merge``: thin wrappers over the preprocess/shards stages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crisscross.tools.cli import add_overrides


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

    p = sub.add_parser("build", help="raw videos/audio -> shards (resumable)",
                       description="Options not given come from --preset (default: preprocess/presets/default.yaml); "
                                   "KEY=VALUE overrides (any preset key, e.g. short_side=128) apply last. "
                                   "Every key: docs/preprocess.md#build-config.")
    p.add_argument("input", help="a folder, a manifest (csv/tsv/jsonl/parquet) or a dataset root")
    p.add_argument("--out", required=True, help="dataset directory (created; rerun to resume)")
    p.add_argument("--preset", default="default", help="preset name or YAML path (flags given here win)")
    # no defaults below: an option not given keeps the preset's value
    opt = dict(default=argparse.SUPPRESS)
    p.add_argument("--name", **opt, help="shard file prefix: NAME-000000.tar")
    p.add_argument("--format", dest="adapter", choices=ADAPTERS, **opt, help="input layout (auto)")
    p.add_argument("--split", type=int, **opt, help="UCF101/HMDB51 official split number (1)")
    p.add_argument("--video-root", **opt, help="Kinetics: folder holding the videos (the CSV's folder)")
    p.add_argument("--fps", type=int, **opt, help="output frame rate (16)")
    p.add_argument("--short-side", type=int, **opt, help="output short side in px (112)")
    p.add_argument("--sample-rate", type=int, **opt, help="output audio rate (16000)")
    p.add_argument("--clip-seconds", type=float, **opt, help="cut sources into clips of this length (off)")
    p.add_argument("--min-seconds", type=float, **opt, help="reject samples shorter than this (1.0)")
    p.add_argument("--require", choices=REQUIRE_CHOICES, **opt, help="modalities a kept sample must have (any)")
    p.add_argument("--audio-format", choices=("pcm", "flac"), **opt, help="pcm")
    p.add_argument("--jpeg-qscale", type=int, **opt, help="MJPEG quantizer 2 (best)..31 (3)")
    p.add_argument("--shard-size", type=float, dest="shard_size_mb", **opt, help="target shard size in MB (1000)")
    p.add_argument("--samples-per-shard", type=int, **opt, help="fixed count (overrides --shard-size)")
    p.add_argument("--seed", type=int, **opt, help="cross-shard shuffle seed (0)")
    p.add_argument("--item-timeout", type=float, dest="item_timeout_s", **opt, help="seconds per source (600)")
    p.add_argument("--workers", type=int, **opt, help="local worker processes (1)")
    p.add_argument("--engine", choices=("local", "ray"), **opt, help="local")
    p.add_argument("--address", **opt, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--isolate", action="store_true", **opt,
                   help="decode each source in its own process (survives decoder crashes and hangs; slower)")
    p.add_argument("--num-tasks", type=int, default=1, help="job array size (then run `shards merge`)")
    p.add_argument("--task-index", type=int, default=0, help="this job array task (0-based)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and CI)")
    _add_error_bound(p)
    add_overrides(p, "short_side=128 clip_seconds=10")
    p.set_defaults(func=_build)


def _add_error_bound(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-error-fraction", type=float, default=0.5, metavar="F",
                   help="exit with an error (status 2, after writing the dataset) when more than this fraction of "
                        "the sources failed, with the failures counted by reason (0.5)")


def check_error_bound(stats, max_fraction: float) -> None:
    """A build where most inputs fail is a wrong input or a broken decoder, not a dataset: say so
    (the failures counted by reason; errors.parquet lists each) and exit non-zero."""
    from crisscross.errors import UserError

    if not 0.0 <= max_fraction <= 1.0:
        raise UserError(f"--max-error-fraction must be in [0, 1], got {max_fraction}")
    if stats.sources and stats.errors > max_fraction * stats.sources:
        raise UserError(f"{stats.errors} of {stats.sources} sources failed, more than --max-error-fraction "
                        f"{max_fraction:g} allows: {stats.error_reasons}; {stats.out_dir / 'errors.parquet'} lists "
                        "each with its message. Fix the input (or --format), or rerun with a higher "
                        "--max-error-fraction to accept the dataset as written")


NOT_BUILD_OPTIONS = {"input", "out", "preset", "overrides", "num_tasks", "task_index", "no_progress", "func",
                     "command", "shards_command", "max_error_fraction"}


def build_options(args: argparse.Namespace) -> dict:
    """The flags given on the command line, as BuildPreset keys (they win over the preset; the
    KEY=VALUE overrides win over them)."""
    given = {k: v for k, v in vars(args).items() if k not in NOT_BUILD_OPTIONS}
    if "shard_size_mb" in given:
        given["shard_size_bytes"] = int(given.pop("shard_size_mb") * 1e6)
    return given


def resolve_build(args: argparse.Namespace) -> dict:
    """Preset <- flags <- KEY=VALUE overrides, checked (a typo is refused before any work)."""
    from crisscross.config import to_dict
    from crisscross.preprocess.presets import resolve_preset

    values = to_dict(resolve_preset(args.preset, args.overrides, build_options(args)))
    if values.get("video_root"):
        values["video_root"] = str(Path(values["video_root"]).resolve())  # the plan must not depend on the cwd
    return values


INTERRUPTED = "interrupted; rerun the same command to resume"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def _build(args: argparse.Namespace) -> int:
    from crisscross.errors import UserError
    from crisscross.preprocess.build import build_shards

    if not 0 <= args.task_index < args.num_tasks:
        raise UserError("--task-index must be in [0, --num-tasks)")
    options = resolve_build(args)
    try:
        stats = build_shards(args.input, args.out, preset=None, num_tasks=args.num_tasks, task_index=args.task_index,
                             progress=not args.no_progress, **options)
    except KeyboardInterrupt:  # the workers are stopped and their unfinished shards removed
        print(f"\ncrisscross shards build: {INTERRUPTED}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(stats.summary())
    if args.num_tasks == 1:  # a job-array task sees only its shards: `shards merge` checks the whole build
        check_error_bound(stats, args.max_error_fraction)
    return 0


def _register_merge(sub) -> None:
    p = sub.add_parser("merge", help="after a job array: write manifest/errors/dataset.json")
    p.add_argument("out", help="dataset directory all tasks wrote to")
    _add_error_bound(p)
    p.set_defaults(func=_merge)


def _merge(args: argparse.Namespace) -> int:
    from crisscross.preprocess.build import merge

    stats = merge(args.out)
    print(stats.summary())
    check_error_bound(stats, args.max_error_fraction)
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
    print(f"verify: {'OK' if not problems else f'{len(problems)} problem(s)'}", flush=True)
    return 1 if problems else 0
