"""``crisscross eval linear|retrieval|finetune|fusion|report``: downstream evaluation.

Each evaluator reads a shard dataset (``--data``), a checkpoint (an export dir, a trainer
checkpoint file, or ``random``), an eval preset or YAML (``--config``) with ``--set key=value``
overrides, and writes ``results.json``, ``results.md`` and ``config.yaml`` into ``--out``.
``report`` collects results.json files into the layout of the paper's Tables 4, 6, 7, 8.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EVALUATORS = ("linear", "retrieval", "finetune", "fusion")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate a pretrained (or random) encoder downstream")
    eval_sub = parser.add_subparsers(dest="evaluator", required=True)
    for name in EVALUATORS:
        p = eval_sub.add_parser(name, help=f"{name} evaluation (writes results.json + results.md)")
        p.add_argument("--checkpoint", required=True, help="export dir, trainer checkpoint file, or 'random'")
        p.add_argument("--data", required=True, type=Path, help="shard dataset dir (manifest.parquet, *.tar)")
        p.add_argument("--config", help="eval preset name (see docs/evaluate.md) or YAML path")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train_pass.clips_per_sample=2 (repeatable)")
        p.add_argument("--out", type=Path, help="output dir (default: eval_runs/<evaluator>-<data name>)")
        p.set_defaults(func=_run_evaluator)
    p = eval_sub.add_parser("report", help="collect results.json files into the paper's table layout")
    p.add_argument("results", nargs="+", type=Path, help="results.json files or folders searched recursively")
    p.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    p.set_defaults(func=_run_report)


def _run_evaluator(args: argparse.Namespace) -> int:
    from crisscross.evaluate.config import load_config

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("eval_runs") / f"{args.evaluator}-{args.data.resolve().name}"
    if args.evaluator == "linear":
        from crisscross.evaluate.pipeline import run_linear as run
    elif args.evaluator == "retrieval":
        from crisscross.evaluate.pipeline import run_retrieval as run
    elif args.evaluator == "fusion":
        from crisscross.evaluate.fusion import run_fusion as run
    else:
        from crisscross.evaluate.finetune import run_finetune as run
    path = run(args.checkpoint, args.data, cfg, out)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote the results
        print((path.parent / "results.md").read_text(encoding="utf-8"))
        print(f"wrote {path}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from crisscross.evaluate.report import atomic_write_text, collect_report, find_results, read_results

    files = find_results(args.results)
    if not files:
        raise SystemExit(f"no results.json under {[str(p) for p in args.results]}")
    rows = [row for f in files for row in read_results(f)]
    text = collect_report(rows)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} ({len(rows)} rows from {len(files)} files)")
    else:
        print(text)
    return 0
