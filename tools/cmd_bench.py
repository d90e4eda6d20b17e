"""``crisscross bench shards|loader|train|eval|gpu|soak|all``: benchmarks that compare ours against a baseline in one run.

Each benchmark lives in ``crisscross.tools.bench_<name>`` and exposes ``add_arguments(parser)``
and ``run(args) -> dict``. The dict holds at least ``ours``, ``baseline``, ``ratio``, ``unit``
and ``device``; it is printed as one JSON object on the last line of output so that results can
be collected by scripts.
"""

from __future__ import annotations

import argparse
import importlib
import json

BENCHMARKS = ("shards", "loader", "train", "eval", "gpu", "soak", "all")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark (JSON figures on the last line)")
    bench_sub = parser.add_subparsers(dest="bench", required=True)
    for name in BENCHMARKS:
        module = importlib.import_module(f"crisscross.tools.bench_{name}")
        p = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=lambda args, m=module: _run(m, args))


def _run(module, args: argparse.Namespace) -> int:
    figures = module.run(args)
    missing = {"ours", "baseline", "ratio", "unit", "device"} - set(figures)
    if missing:
        raise RuntimeError(f"benchmark result lacks {sorted(missing)}")
    print(json.dumps(figures, sort_keys=True))
    return 0
