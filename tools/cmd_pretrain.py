"""``crisscross pretrain``: CrissCross self-supervised pretraining (plain process or under torchrun).

    crisscross pretrain --config kinetics_sound data.shards=/data/ks run.dir=runs/ks
    torchrun --nproc-per-node 4 -m crisscross.tools.cli pretrain --config kinetics_sound --resume auto
"""

from __future__ import annotations

import argparse
import json
import sys

from crisscross.tools.cli import add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pretrain", help="self-supervised CrissCross pretraining",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="preset name (kinetics_sound, kinetics400, audioset, demo, debug) or a YAML file")
    parser.add_argument("--resume", default=None,
                        help="'auto' = newest complete checkpoint of run.dir (fresh start if none), or a checkpoint path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_overrides(parser, "optim.lr=1e-4 run.dir=runs/x objective.terms=[sync,intra] (docs/train.md#config-keys)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from crisscross.tools.preflight import check_pretrain
    from crisscross.train.config import resolve_config

    # a bad preset, key or value (the data section included) raises ConfigError/ValueError/
    # FileNotFoundError before any work: one line, exit 2 (tools/cli.py)
    config = resolve_config(args.config, args.overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config, sort_keys=False))
        return 0
    check_pretrain(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    from crisscross.train.trainer import NonFiniteLossError, train

    try:
        summary = train(config, resume=args.resume)
    except NonFiniteLossError as exc:  # not a user error: the run diverged
        print(f"crisscross pretrain: error: {exc}", file=sys.stderr)
        return 3
    if _is_main():
        print(json.dumps(summary, sort_keys=True))
    return 0


def _is_main() -> bool:
    import os
    return os.environ.get("RANK", "0") == "0"
