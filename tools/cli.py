"""The ``crisscross`` command line: a thin dispatcher; each command calls one function of its stage.

Each command group lives in its own module exposing ``register(subparsers)``; the module is
imported only when listed here, so a command's heavy imports (torch, DALI, Ray) load only when
that command runs.

One rule for errors, every command: a user error (bad input, bad config, data that does not hold
what the command needs) prints ``crisscross <cmd>: error: <message>`` on stderr and exits with
code 2; ``--debug`` (before or after the command) shows the traceback instead. Anything else is a
bug and keeps its traceback. Ctrl-C prints ``crisscross <cmd>: interrupted`` and exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from crisscross.errors import UserError

# command group -> module that registers it
COMMAND_MODULES: dict[str, str] = {
    "shards": "crisscross.tools.cmd_shards",
    "pretrain": "crisscross.tools.cmd_pretrain",
    "eval": "crisscross.tools.cmd_eval",
    "bench": "crisscross.tools.cmd_bench",
    "demo": "crisscross.tools.cmd_demo",
    "demo-data": "crisscross.tools.demo_data",
    "weights": "crisscross.tools.cmd_weights",
}

# Exceptions that mean "the input or the config is wrong", reported in one line with exit code 2.
# ValueError is the stages' convention for a bad value (config parsing, manifest checks);
# ConnectionError is Ray's "no cluster at --address". ShardError (shards/loader.py) is a UserError.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ConnectionError,
)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "CRISSCROSS_DEBUG"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("crisscross")
    except Exception:  # running from a source tree that was never installed
        from crisscross import __version__

        return __version__


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (those without sub-commands), depth first."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for sub in subs for child in dict.fromkeys(sub.choices.values()) for leaf in _leaf_parsers(child)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crisscross", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"crisscross {_version()}",
                        help="print the installed version and exit")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(module_name).register(sub)
    for leaf in _leaf_parsers(parser):
        if leaf is parser:
            continue
        # SUPPRESS: given after the command it sets args.debug; not given, it leaves the top-level value
        leaf.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error")
        leaf.set_defaults(_prog=leaf.prog)
        if any(a.dest == OVERRIDES and not a.option_strings for a in leaf._actions):
            leaf.add_argument("--set", dest=SET_OVERRIDES, action="append", default=[], metavar="KEY=VALUE",
                              help="a config override, the same as a positional KEY=VALUE (repeatable; "
                                   "applied before the positional ones)")
    return parser


# The one override syntax of every command that takes a config (pretrain, eval, shards build,
# bench train): positional ``key.sub=value`` words, values read as YAML (crisscross.config);
# ``--set key.sub=value`` is the same. A command opts in with add_overrides().
OVERRIDES = "overrides"
SET_OVERRIDES = "set_overrides"


def add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    """Positional ``KEY=VALUE`` config overrides (``--set`` is added with --debug by build_parser)."""
    parser.add_argument(OVERRIDES, nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides, values read as YAML, e.g. {example}")


def _collect_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """``--set`` values, then the positional ones; words after another positional (argparse takes
    ``nargs='*'`` only once: ``shards build IN --out X fps=8``) are overrides too when they hold ``=``."""
    stray = [w for w in extras if w.startswith("-") or "=" not in w]
    if extras and (stray or not hasattr(args, OVERRIDES)):
        parser.error(f"unrecognized arguments: {' '.join(stray or extras)}")
    if hasattr(args, OVERRIDES):
        args.overrides = [*vars(args).pop(SET_OVERRIDES, []), *(args.overrides or []), *extras]


def report_user_error(prog: str, exc: BaseException) -> None:
    """``<prog>: error: <message>`` on stderr (one line; an OSError without its errno noise)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename and not isinstance(exc, ConnectionError):
        message = f"{exc.strerror}: {exc.filename}"
    else:
        message = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:  # str(KeyError) adds quotes around the message
        message = str(exc.args[0])
    message = " ".join(message.split())  # one line, whatever the message held
    print(f"{prog}: error: {message}", file=sys.stderr)


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, overrides collected (what ``main`` runs; the docs tests parse
    every documented command with it)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    _collect_overrides(parser, args, extras)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    # the commands see only their own options (some pass every option on to their stage)
    prog = vars(args).pop("_prog", "crisscross")
    debug = bool(vars(args).pop("debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        if debug:
            raise
        report_user_error(prog, exc)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
