"""One configuration system for every command: typed dataclasses, YAML presets, ``key=value`` overrides.

Each stage describes its configuration as (nested) dataclasses whose ``__post_init__`` checks
values (choices, ranges); this module turns presets and overrides into an instance of them:

* a preset is a YAML mapping, named (a file of the stage's preset folder) or a path; it may name
  a ``base:`` preset that it updates key by key (chains of any length, loops refused);
* an override is ``key.sub=value`` with the value read as YAML (``optim.lr=1e-4``,
  ``objective.terms=[sync,intra]``, ``run.max_steps=null``);
* merging, type checking and conversion are OmegaConf's structured configs: an unknown key
  (a typo), a value of the wrong type (``optim.lr=fast``) or a missing required value is a
  :class:`ConfigError` naming the dotted key, and the dataclasses' own checks run on the result,
  all before the command does any work.

``load(schema, preset=..., overrides=...)`` is the one strict loader; ``from_dict(schema, values)``
is the same check for a plain dict (a config stored in a checkpoint or a backbones.json);
``to_dict(config)`` is the plain dict every output stores (``config.yaml``, checkpoints).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from crisscross.errors import UserError

T = TypeVar("T")
BASE_KEY = "base"


class ConfigError(UserError, ValueError):
    """A preset, key or value the configuration refuses (one line on the command line, exit 2).
    Also a ValueError: callers and tests of the stages catch bad values as ValueError."""


# ----------------------------------------------------------------------------- presets
def preset_names(preset_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(preset_dir).glob("*.yaml"))


def preset_path(name_or_path: str | Path, preset_dir: Path) -> Path:
    """A YAML path as given, else ``<preset_dir>/<name>.yaml``; a folder is never a preset."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = Path(preset_dir) / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    if path.suffix in (".yaml", ".yml"):
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    raise FileNotFoundError(f"no config file or preset named {str(name_or_path)!r}; presets: "
                            f"{preset_names(preset_dir)} (or give a .yaml path)")


def read_preset(name_or_path: str | Path, preset_dir: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The preset's mapping with its ``base:`` chain merged underneath (not yet validated)."""
    path = preset_path(name_or_path, preset_dir).resolve()
    if path in _seen:
        raise ConfigError(f"preset inheritance loops through {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    # a relative base path is relative to the preset that names it
    base_ref = Path(str(base))
    if base_ref.suffix in (".yaml", ".yml") and not base_ref.is_absolute():
        base_ref = path.parent / base_ref
        base = str(base_ref)
    return deep_merge(read_preset(base, preset_dir, _seen + (path,)), raw)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, mappings merged key by key (a preset may set one nested field)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- overrides
def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-4"`` -> ``{"optim": {"lr": 1e-4 as YAML reads it}}`` (types are checked later)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # e.g. an unbalanced bracket: checked as a string against the field's type
    for part in reversed(parts):
        value = {part.strip(): value}
    return value


# ----------------------------------------------------------------------------- the strict loader
def _known_keys(schema: type, dotted: str) -> list[str] | None:
    """The field names at ``dotted`` (a prefix of the bad key) of a dataclass schema."""
    node: Any = schema
    for part in [p for p in dotted.split(".") if p]:
        if not dataclasses.is_dataclass(node):
            return None
        types = {f.name: f.type for f in dataclasses.fields(node)}
        hints = _hints(node)
        if part not in types:
            return None
        node = hints.get(part)
    return sorted(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else None


def _hints(cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: no hint, only the key in the message
        return {}


def _message(exc: Exception, schema: type, where: str) -> str:
    from omegaconf.errors import ConfigKeyError

    key = getattr(exc, "full_key", None) or ""
    head = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    dotted = f"{where}{key}" if key else where.rstrip(".")
    if isinstance(exc, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        known = _known_keys(schema, parent)
        return f"unknown config key {dotted!r}" + (f"; known here: {known}" if known else "")
    return f"{dotted}: {head}" if dotted else head


def load(schema: type[T], *layers: dict[str, Any] | None, overrides: Iterable[str] = (), where: str = "") -> T:
    """The schema's defaults <- each layer (dicts, in order) <- each override, checked; an instance of
    ``schema`` whose ``__post_init__`` checks have run. ``where`` prefixes keys in messages
    (``data.`` when the schema is a section of a larger config)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.structured(schema)
        for layer in layers:
            if layer:
                if not isinstance(layer, dict):
                    raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {layer!r}")
                merged = OmegaConf.merge(merged, layer)
        for text in overrides:
            try:
                merged = OmegaConf.merge(merged, parse_override(text))
            except OmegaConfBaseException as exc:
                if getattr(exc, "full_key", None):
                    raise
                key = text.split("=", 1)[0].strip()  # OmegaConf names no key for some errors (tuple length)
                raise ConfigError(f"{where}{key}: {str(exc).splitlines()[0]}") from None
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ValueError) and not isinstance(cause, OmegaConfBaseException):
            raise ConfigError(f"{where}{cause}" if where and not str(cause).startswith(where) else str(cause)) from None
        raise ConfigError(_message(exc, schema, where)) from None
    except TypeError as exc:  # e.g. a scalar where a section is expected
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {exc}") from None


def from_known_keys(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)`` after refusing keys that are not fields of the dataclass ``cls`` (a typo
    must not pass silently): the light check of a section's ``from_dict`` (ValueError ``unknown
    <what> keys [...]; known: [...]``); values are checked by the dataclass itself."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def from_dict(schema: type[T], values: dict[str, Any] | T | None, *, where: str = "") -> T:
    """``values`` (a plain dict, e.g. from a checkpoint) checked against ``schema``; an instance
    of the schema passes through unchanged."""
    if isinstance(values, schema):
        return values
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or schema.__name__}: expected a mapping, got {values!r}")
    return load(schema, dict(values or {}), where=where)


def resolve(schema: type[T], preset: str | Path | dict[str, Any] | None, overrides: Iterable[str] = (), *,
            preset_dir: Path) -> T:
    """Defaults <- preset chain (a name, a YAML path or a dict) <- overrides: the one entry every command uses."""
    layer = dict(preset) if isinstance(preset, dict) else read_preset(preset, preset_dir) if preset is not None else {}
    return load(schema, layer, overrides=list(overrides))


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain dicts, lists and scalars (tuples as lists): what YAML/JSON store."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def coerce_sections(config: Any) -> None:
    """Fields typed as a dataclass but given a dict (``EvalConfig(loader={"n_mels": 40})`` in
    Python code) become that dataclass, checked as strictly as a preset (in place)."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), hints.get(f.name)
        if isinstance(value, dict) and dataclasses.is_dataclass(kind):
            object.__setattr__(config, f.name, from_dict(kind, value, where=f"{f.name}."))


class Strict:
    """Mixin: ``Cls.from_dict(values)`` = :func:`from_dict` (unknown keys, types, checks) and
    ``obj.to_dict()`` = :func:`to_dict`, the same for every config section."""

    SECTION = ""  # the section's dotted prefix in messages, e.g. "svm."

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any] | None = None) -> T:
        return from_dict(cls, values, where=getattr(cls, "SECTION", ""))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
