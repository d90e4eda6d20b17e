"""Every option of every command has help text; eval subcommands describe themselves and list
their presets; ``demo --help`` is a short page, not an experiment log; ``--version`` works."""

from __future__ import annotations

import argparse
import subprocess
import sys

from crisscross.tools.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    """(command path, parser) for the top parser and every sub-command, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, path + (name,))


def test_every_option_and_argument_has_help_text():
    missing = []
    for path, parser in _walk(build_parser(), ("crisscross",)):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


def test_every_sub_command_has_a_one_line_help():
    missing = []
    for path, parser in _walk(build_parser(), ("crisscross",)):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if (choice.help or "").strip()}
                missing += [f"{' '.join(path)} {name}" for name in action.choices if name not in helped]
    assert not missing, f"commands without help: {missing}"


def test_eval_subcommands_describe_themselves_and_list_their_presets():
    from crisscross.evaluate.config import preset_names

    parsers = dict(_walk(build_parser(), ("crisscross",)))
    listed: set[str] = set()
    for evaluator in ("linear", "retrieval", "finetune", "fusion"):
        page = parsers[("crisscross", "eval", evaluator)].format_help()
        assert parsers[("crisscross", "eval", evaluator)].description, evaluator
        assert f"presets for {evaluator}" in page
        listed |= {name for name in preset_names() if f"  {name} " in page}
    assert "esc50_2s" in parsers[("crisscross", "eval", "linear")].format_help()
    assert "finetune_ucf101_8f" in parsers[("crisscross", "eval", "finetune")].format_help()
    assert listed == set(preset_names()), f"presets no eval subcommand lists: {set(preset_names()) - listed}"
    assert parsers[("crisscross", "eval", "report")].description


def test_demo_help_is_short_and_carries_no_experiment_log():
    page = dict(_walk(build_parser(), ("crisscross",)))[("crisscross", "demo")].format_help()
    assert "e8'" not in page and "pre/rnd" not in page
    assert "docs/demo.md" in page
    assert len(page.splitlines()) < 60


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    proc = subprocess.run([sys.executable, "-m", "crisscross.tools.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"crisscross {version('crisscross')}"
