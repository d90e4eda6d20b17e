"""README's commands exist: every `crisscross ...` line it shows parses with the real CLI."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from crisscross.tools.cli import build_parser, parse_command_line

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _command_lines(text: str) -> list[str]:
    """`crisscross ...` invocations inside fenced code blocks (after `$ ` or `&& ` too)."""
    lines, in_block = [], False
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        for part in re.split(r"&&|;", raw):
            part = part.strip().removeprefix("$ ").strip()
            if part.startswith("crisscross "):
                lines.append(part.split(" #")[0].rstrip(" \\"))
    return lines


def _subcommand_path(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """Follow sub-parsers as far as the words go; return the chosen command path."""
    path = []
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or not words or words[0].startswith("-"):
            return path
        choices = subs[0].choices
        if words[0] not in choices:
            raise AssertionError(f"unknown command {' '.join(path + [words[0]])!r}; known: {sorted(choices)}")
        path.append(words[0])
        parser, words = choices[words[0]], words[1:]


def test_readme_shows_both_commands():
    text = (REPO / "README.md").read_text()
    assert "crisscross demo" in text
    assert "python -m pytest" in text
    ci = (REPO / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if line.strip().startswith("python -m pytest"))
    assert test_command.strip() in text, "README must show exactly the test command .ci/run runs"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_parse(doc):
    parser = build_parser()
    commands = _command_lines(doc.read_text())
    for line in commands:
        words = shlex.split(line)[1:]
        path = _subcommand_path(parser, words)
        assert path, f"{doc.name}: {line!r} names no command"
        # parse the whole line when it names no placeholder (<...>, ..., $VAR): options must exist too
        if not any("<" in w or "..." in w or "$" in w for w in words):
            try:
                parse_command_line(words)  # as `crisscross` parses it (overrides after other positionals)
            except SystemExit as exc:
                raise AssertionError(f"{doc.name}: {line!r} does not parse") from exc
