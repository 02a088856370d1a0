"""Loading configs: the layers, the YAML reader and its safety limits, overrides, presets.

A config is built in layers: schema defaults <- preset <- YAML file <- dotted overrides
(`env.max_moves=256`, values parsed as YAML scalars). Any problem (unreadable file, bad YAML,
unknown key, bad value) raises one `ConfigError` whose message names the field path.
The schema itself (every field and default) is keisei_ray/config.py.
"""

from __future__ import annotations

import copy
import json
import reprlib
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from keisei_ray.config import Config, ConfigError
from keisei_ray.text import did_you_mean

# ----------------------------------------------------------------------------- presets

# Presets are partial configs shipped as YAML beside this module (keisei_ray/presets/*.yaml).
# `local` is the schema's defaults; the others override only what differs.


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    folder = resources.files("keisei_ray") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    """The partial config of a shipped preset."""
    if name not in preset_names():
        raise ConfigError(f"preset {name!r}: unknown (known: {', '.join(preset_names())})")
    text = (resources.files("keisei_ray") / "presets" / f"{name}.yaml").read_text("utf-8")
    return yaml.safe_load(text) or {}


# ----------------------------------------------------------------------------- loading


_REPR = reprlib.Repr()  # 3.11 takes no keyword arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxlong = 3, 4, 4, 60, 40


def _short_repr(value: Any) -> str:
    """A bounded repr of a bad value: a YAML alias bomb or a deep nest must not be printed
    (or even walked) whole."""
    return _REPR.repr(value)


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field" + did_you_mean(path, _known_keys(e["loc"][:-1]))
        elif "input" in e and e["type"] not in ("missing",):
            msg = f"{msg} (got {_short_repr(e['input'])})"
        parts.append(f"{path}: {msg}")
    return "; ".join(parts)


def _known_keys(loc: Sequence[Any]) -> list[str]:
    """The dotted names of the fields of the config section at `loc` (for "did you mean")."""
    section: Any = Config
    for part in loc:
        field = section.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return []
        section = field.annotation
    return [".".join([*map(str, loc), name]) for name in section.model_fields]


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return `base` with `update` merged in recursively (mappings merge, the rest replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` into (["a", "b", "c"], value); the value is a YAML scalar."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. env.max_moves=256")
    path = key.split(".")
    if any(not p for p in path):
        raise ConfigError(f"override {text!r}: empty component in key {key!r}")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {_short_repr(raw)} is not valid YAML "
                          f"({exc})") from exc
    except RecursionError:
        raise ConfigError(f"override {key}: value nested too deeply") from None
    _check_size(value, f"override {key}")
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Deep-merge dotted `key=value` overrides into a nested dict."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


MAX_NODES = 100_000
"""Most values (YAML aliases expanded) a config file or override may hold."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists a config file or override may have."""


class _TooDeepError(yaml.YAMLError):
    def __init__(self, mark: Any) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")
        self.problem = f"nested deeper than {MAX_DEPTH} levels"
        self.problem_mark = mark


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that stops at MAX_DEPTH levels of nesting, before PyYAML's recursive
    composer (and its slow scanner) spends seconds on a deep document or overflows the stack."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeepError(self.get_mark())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader


def _check_size(data: Any, where: str) -> None:
    """ConfigError for a document too big once its aliases are expanded (a "billion laughs"
    bomb would otherwise hang validation) or nested too deeply; stops after MAX_NODES."""
    seen = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} values (YAML aliases expanded)")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from `path` (an empty file is an empty mapping)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{where}") from exc
    except RecursionError:
        raise ConfigError(f"config file {path}: nested too deeply") from None
    _check_size(data, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got "
                          f"{type(data).__name__}")
    return data


# Model fields added after files were saved without them, and the value those files were made
# with: a saved config holds every field, so a missing one dates the file.
_ADDED_MODEL_FIELDS = {"policy_head": "absolute"}


def saved_model_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A model config read back from a checkpoint or model file, completed with the values of
    fields that did not exist when it was written (so older files still load)."""
    return {**_ADDED_MODEL_FIELDS, **data}


# Fields removed from the schema, and why: configs that still name them (older files, the
# config saved in older checkpoints) load with a warning; the schema forbids unknown keys.
REMOVED_FIELDS: dict[tuple[str, str], str] = {
    ("env", "seed"): "it never seeded anything (the games' randomness comes from train.seed "
                     "in self-play and evaluation.seed in evaluation)",
}


def _drop_removed_fields(data: Mapping[str, Any]) -> Mapping[str, Any]:
    removed = [(section, key) for section, key in REMOVED_FIELDS
               if isinstance(data.get(section), Mapping) and key in data[section]]
    if not removed:
        return data
    out = copy.deepcopy(dict(data))
    for section, key in removed:
        del out[section][key]
        warnings.warn(f"config: {section}.{key} is no longer a setting and is ignored: "
                      f"{REMOVED_FIELDS[section, key]}; remove it from the file",
                      FutureWarning, stacklevel=3)
    return out


def validate(data: Mapping[str, Any]) -> Config:
    """Validate a nested dict against the schema; errors name the field path."""
    data = _drop_removed_fields(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    share = config.train.opponent_share + config.league.share
    if config.league.enabled and share >= 1.0:
        raise ConfigError(f"league.share: with train.opponent_share it must leave room for "
                          f"self-play games (their sum is {share:g}, must be < 1)")
    return config


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config: defaults <- base <- preset <- file <- overrides."""
    data: dict[str, Any] = dict(base or {})
    if preset is not None:
        data = deep_merge(data, read_preset(preset))
    if path is not None:
        data = deep_merge(data, read_yaml(Path(path)))
    data = apply_overrides(data, overrides)
    return validate(data)


def dump(config: Config, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """The effective config as YAML or JSON text (round-trips through `load_config`)."""
    data = config.model_dump(mode="json")
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)
