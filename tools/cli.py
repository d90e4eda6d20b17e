"""The ``crisscross`` command line: a thin dispatcher; each command calls one function of its stage.

Each command group lives in its own module exposing ``register(subparsers)``; the module is
imported only when listed here, so a command's heavy imports (torch, DALI, Ray) load only when
that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command group -> module that registers it
COMMAND_MODULES: dict[str, str] = {
    "shards": "crisscross.tools.cmd_shards",
    "pretrain": "crisscross.tools.cmd_pretrain",
    "eval": "crisscross.tools.cmd_eval",
    "bench": "crisscross.tools.cmd_bench",
    "demo": "crisscross.tools.cmd_demo",
    "demo-data": "crisscross.tools.demo_data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crisscross", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
