"""Every `crisscross ...` command shown in README.md and docs/*.md names things that exist.

For each command in a fenced shell block (continuation lines joined, `torchrun ... -m
crisscross.tools.cli` forms included):

* ``pretrain --config P key=value ...``: P is a training preset (or a YAML path), every override
  key exists in ``TrainConfig`` and the resolved config accepts the concrete ones;
* ``eval <evaluator> --config P key=value ...`` (or ``--set key=value``): P is an eval preset and
  every key exists in ``EvalConfig`` (its typed sections included);
* ``shards build --preset P key=value ...``: P is a preprocessing preset and every key exists in
  ``BuildPreset``;
* in docs/reproducing.md, every dataset a command reads (``--data``, ``data.shards=``) is built
  by a ``shards build --out`` earlier on the page.

Placeholders (``<...>``, ``...``, ``$VAR``, upper-case words such as ``DIR``) are not resolved:
their keys are still checked, their values are not. Whether the options parse at all is
tests/test_readme_cli.py's job.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console", "text")
ENTRY = re.compile(r"(?:^|\s)(?:crisscross|-m\s+crisscross\.tools\.cli)\s+(?P<rest>.*)$")
HEREDOC = re.compile(r"<<-?\s*'?\"?(?P<tag>\w+)'?\"?")


# ------------------------------------------------------------------------------ extraction
def shell_lines(text: str) -> list[str]:
    """Logical lines of the fenced shell blocks: continuations joined, heredoc bodies and comments dropped."""
    out: list[str] = []
    in_block, kind, heredoc, pending = False, "", None, ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block, kind = (not in_block), stripped[3:].strip().lower()
            pending = ""
            continue
        if not in_block or kind not in SHELL_BLOCKS:
            continue
        if heredoc:
            heredoc = None if stripped == heredoc else heredoc
            continue
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if m := HEREDOC.search(line):
            heredoc = m["tag"]
        out.append(line)
    return out


def _strip_comment(line: str) -> str:
    return re.split(r"\s#", " " + line, maxsplit=1)[0].strip()


def commands(text: str) -> list[list[str]]:
    """The words after `crisscross` of every invocation, in page order."""
    found = []
    for line in shell_lines(text):
        for part in re.split(r"&&|;|\|", _strip_comment(line)):
            part = part.strip().removeprefix("$ ")
            if m := ENTRY.search(part):
                found.append(shlex.split(m["rest"]))
    return found


def is_placeholder(value: str) -> bool:
    return any(t in value for t in ("<", "...", "$")) or bool(re.fullmatch(r"[A-Z][A-Z_]*", value))


def option(words: list[str], name: str) -> list[str]:
    """Every value given to ``name`` (``--x v`` or ``--x=v``)."""
    values = []
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith(name + "="):
            values.append(word.split("=", 1)[1])
    return values


# ------------------------------------------------------------------------------ checks
@cache
def _train_presets() -> tuple[str, ...]:
    from crisscross.train.config import preset_names

    return tuple(preset_names())


@cache
def _eval_presets() -> tuple[str, ...]:
    from crisscross.evaluate.config import preset_names

    return tuple(preset_names())


def _preprocess_presets() -> list[str]:
    return sorted(p.stem for p in (REPO / "preprocess" / "presets").glob("*.yaml"))


def _is_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or "/" in value


def overrides(words: list[str]) -> list[str]:
    """The ``key=value`` overrides of a command: positional words and ``--set`` values (the same)."""
    found, skip = [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        if word == "--set":
            found.extend(words[i + 1:i + 2])
            skip = True
        elif word.startswith("--set="):
            found.append(word.split("=", 1)[1])
        elif word.startswith("-"):
            skip = "=" not in word and i + 1 < len(words) and not words[i + 1].startswith("-") \
                and "=" not in words[i + 1]
        elif "=" in word:
            found.append(word)
    return found


def key_exists(schema: type, dotted: str) -> bool:
    """``dotted`` names a field of the (nested) dataclass ``schema``; under a field typed ``Any``
    (e.g. the eval ``model``) any key is accepted."""
    import typing

    node: Any = schema
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return node is Any
        if part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = typing.get_type_hints(node)[part]
    return True


def check_overrides(schema: type, resolve, preset: str | None, words: list[str]) -> list[str]:
    """Every override key exists (placeholder values too); the concrete ones resolve."""
    errors, concrete = [], []
    for item in overrides(words):
        key, value = item.split("=", 1)
        if not key_exists(schema, key.strip()):
            errors.append(f"unknown config key {key!r}")
        elif not is_placeholder(value):
            concrete.append(item)
    if errors:
        return errors
    try:
        resolve(preset, concrete)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        return [f"{preset} {' '.join(concrete)}: {exc}"]
    return []


def check_pretrain(words: list[str]) -> list[str]:
    from crisscross.train.config import TrainConfig, load_train_config

    configs = option(words, "--config")
    if not configs or is_placeholder(configs[0]) or _is_path(configs[0]):
        return []
    config = configs[0]
    if config not in _train_presets():
        return [f"no training preset {config!r} (presets: {list(_train_presets())})"]
    return check_overrides(TrainConfig, load_train_config, config, words)


def check_eval(words: list[str]) -> list[str]:
    from crisscross.evaluate.config import EvalConfig, load_config

    if words[1:2] == ["report"]:
        return []
    configs = option(words, "--config")
    config = configs[0] if configs else None
    if config and not is_placeholder(config) and not _is_path(config) and config not in _eval_presets():
        return [f"no eval preset {config!r} (presets: {list(_eval_presets())})"]
    if config and (is_placeholder(config) or _is_path(config)):
        config = None
    return check_overrides(EvalConfig, load_config, config, words)


def check_shards(words: list[str]) -> list[str]:
    from crisscross.preprocess.presets import BuildPreset, resolve_preset

    if words[1:2] != ["build"]:
        return []
    presets = [p for p in option(words, "--preset") if not is_placeholder(p) and not _is_path(p)]
    unknown = [f"no preprocessing preset {p!r}" for p in presets if p not in _preprocess_presets()]
    return unknown or check_overrides(BuildPreset, resolve_preset, presets[0] if presets else "default", words[2:])


def check_command(words: list[str]) -> list[str]:
    if not words:
        return ["empty command"]
    return {"pretrain": check_pretrain, "eval": check_eval, "shards": check_shards}.get(words[0], lambda w: [])(words)


def datasets_read(words: list[str]) -> list[str]:
    """Shard datasets a command reads."""
    if words[:1] == ["eval"] and words[1:2] != ["report"]:
        return option(words, "--data")
    if words[:1] == ["pretrain"]:
        given = [w.split("=", 1)[1] for w in words if w.startswith("data.shards=")]
        return given or ["(the preset's data.shards: name it, so that it is one built on this page)"]
    return []


def _matches(path: str, built: list[str]) -> bool:
    """``$VAR`` / ``${VAR}`` in ``path`` stand for any word."""
    pattern = re.escape(path)
    pattern = re.sub(r"\\\$\\\{\w+\\\}|\\\$\w+", r"[^/]+", pattern)
    return any(re.fullmatch(pattern, b) for b in built)


def check_datasets_built_first(text: str) -> list[str]:
    built: list[str] = []
    errors = []
    for words in commands(text):
        for path in datasets_read(words):
            if not _matches(path.rstrip("/"), built):
                errors.append(f"{' '.join(words[:2])} reads {path}, which no earlier `shards build --out` builds")
        if words[:2] == ["shards", "build"]:
            built.extend(o.rstrip("/") for o in option(words, "--out"))
    return errors


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_name_existing_presets_and_keys(doc: Path):
    errors = [f"{' '.join(words)}: {e}" for words in commands(doc.read_text(encoding="utf-8"))
              for e in check_command(words)]
    assert not errors, f"{doc.name}:\n" + "\n".join(errors)


def test_reproducing_page_builds_every_dataset_before_it_is_used():
    text = (REPO / "docs" / "reproducing.md").read_text(encoding="utf-8")
    found = commands(text)
    assert sum(w[:2] == ["shards", "build"] for w in found) >= 10
    assert sum(w[:1] == ["eval"] for w in found) >= 10 and sum(w[:1] == ["pretrain"] for w in found) >= 3
    errors = check_datasets_built_first(text)
    assert not errors, "\n".join(errors)


def test_reproducing_table4_uses_the_large_scale_inputs():
    text = (REPO / "docs" / "reproducing.md").read_text(encoding="utf-8")
    table4 = text[text.index("## Table 4"):text.index("## Table 5")]
    presets = {option(w, "--config")[0] for w in commands(table4) if w[:2] == ["eval", "linear"]}
    assert presets == {"ucf101_32f", "hmdb51_32f", "kinetics400", "esc50_5s", "dcase"}


def test_the_checks_can_fail():
    page = """
```bash
crisscross shards build /data/x --out /shards/x
crisscross pretrain --config kinetics_sound data.shards=/shards/y run.dir=runs/a
crisscross pretrain --config no_such_preset data.shards=/shards/x
crisscross pretrain --config kinetics_sound data.shards=/shards/x optim.learning_rate=1 \\
    data.no_such_key=1
crisscross eval linear --checkpoint runs/a/export --data /shards/x --config no_such --set fc.epochs=1
crisscross eval linear --checkpoint runs/a/export --data /shards/x --config ucf101_32f --set fc.epoch=1
crisscross eval linear --checkpoint runs/a/export --data /shards/x --config ucf101_32f --set fc.features=sometimes
for s in 1 2; do crisscross eval linear --checkpoint $CKPT --data /shards/x$s --config dcase; done
crisscross shards build /data/x --preset no_such --out /shards/z
crisscross shards build /data/x --out /shards/z short_sde=128
crisscross eval linear --checkpoint runs/a/export --data /shards/x --config demo svm.cost=[1]
```
"""
    found = commands(page)
    assert len(found) == 11
    errors = [check_command(w) for w in found]
    assert [bool(e) for e in errors] == [False, False, True, True, True, True, True, False, True, True, True]
    assert "learning_rate" in errors[3][0] and "no_such_key" in errors[3][1]
    built_errors = check_datasets_built_first(page)
    assert len(built_errors) == 2 and "/shards/y" in built_errors[0] and "/shards/x$s" in built_errors[1]
