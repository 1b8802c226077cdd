"""Reading a config: YAML files (``yaml.safe_load`` only) and ``--set key=value`` overrides
(values parsed as YAML scalars or flow lists), merged over the schema's defaults, type-checked
against the schema (:mod:`sslkit.config.schema`) and validated.

Every problem is a :class:`~sslkit.errors.ConfigError` whose one-line message names the key,
the value and what is allowed (or, for an unknown key, the closest valid key). Nothing here
imports torch, so a bad command line is reported in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from typing import Any, Literal, Union

import yaml

from sslkit.config.rules import show as _show, validate
from sslkit.config.schema import SECTIONS, Config, _field, _is_str_key, all_keys
from sslkit.errors import ConfigError

DEMO_CONFIG = "configs/demo.yaml"


# Names other toolkits use for our keys: a spelling match would miss these.
_ALIASES = {"learning_rate": "lr", "base_lr": "lr", "wd": "weight_decay", "bs": "batch_size",
            "epoch": "epochs", "max_epochs": "epochs", "tau": "temperature", "t": "temperature",
            "k": "queue_size", "arch": "backbone", "m": "momentum"}


def _unknown(key: str) -> ConfigError:
    section, _, name = key.rpartition(".")
    alias = f"{section}.{_ALIASES[name]}" if name in _ALIASES else None
    close = [alias] if alias in all_keys() else difflib.get_close_matches(
        key, all_keys(), n=1, cutoff=0.5)
    if not close and "." in key:  # right field name under the wrong section?
        tail = key.rsplit(".", 1)[1]
        close = [k for k in all_keys() if k.endswith("." + tail)][:1]
    hint = f"; did you mean '{close[0]}'?" if close else "; see the keys in configs/demo.yaml"
    return ConfigError(f"unknown config key '{key}'{hint}")


# --------------------------------------------------------------------------- type checking
def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Union:
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, converted value) for ``value`` against the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None:
            return (type(None) in args), None
        for a in args:  # int before float keeps subset=5 a count and subset=0.5 a fraction
            if a is type(None):
                continue
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return (value in args and type(value) in {type(a) for a in args}), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for item in value:
            ok, v = _coerce(item, args[0])
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, float(value)
        if isinstance(value, float):
            return math.isfinite(value), value
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                v = float(value)
            except ValueError:
                return False, value
            return math.isfinite(v), v
        return False, value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not user input


def _check_bounds(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if isinstance(value, list) and meta.get("length") is not None and len(value) != meta["length"]:
        raise ConfigError(f"{key}={_show(value)} is invalid: expected a list of "
                          f"{meta['length']} numbers")
    for v in (value if isinstance(value, list) else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        for op, bound, ok, word in (("gt", meta.get("gt"), lambda a, b: a > b, ">"),
                                    ("ge", meta.get("ge"), lambda a, b: a >= b, ">="),
                                    ("lt", meta.get("lt"), lambda a, b: a < b, "<"),
                                    ("le", meta.get("le"), lambda a, b: a <= b, "<=")):
            if bound is not None and not ok(v, bound):
                raise ConfigError(f"{key}={_show(value)} is out of range: must be {word} "
                                  f"{bound:g}")


def _set_value(tree: dict, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or "." in name:
        raise _unknown(key)
    if name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        raise _unknown(key)
    tp, meta = _field(section, name)
    ok, v = _coerce(value, tp)
    if not ok:
        raise ConfigError(f"{key}={_show(value)} is invalid: expected {_describe(tp)}")
    _check_bounds(key, v, meta)
    tree.setdefault(section, {})[name] = v


# --------------------------------------------------------------------------- loading
def read_yaml_file(path: str | os.PathLike) -> dict:
    """Read a YAML mapping from a file with ``yaml.safe_load``; every failure is a ConfigError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file "
                          f"(e.g. configs/demo.yaml)")
    if os.path.isdir(path):
        raise ConfigError(f"config path '{path}' is a directory, not a YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(10_000_001)
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}") from None
    if len(raw) > 10_000_000:
        raise ConfigError(f"config file '{path}' is larger than 10 MB; is it really a config?")
    if b"\x00" in raw:
        raise ConfigError(f"config file '{path}' is binary, not YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; save it as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        if "python/" in text and "constructor" in type(e).__name__.lower():
            problem = "python tags are not allowed (configs are plain YAML)"
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file '{path}' is nested too deeply") from None
    if data is None:
        raise ConfigError(f"config file '{path}' is empty; start from configs/demo.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of sections (run:, data:, "
                          f"...), not a {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``key=value``; the value is a YAML scalar or flow list."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"malformed --set '{item}': expected key=value, e.g. "
                          f"--set train.epochs=10")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"malformed --set '{item}': the key before '=' is empty")
    if text.strip() == "":
        raise ConfigError(f"malformed --set '{item}': no value after '='; use null for none")
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"malformed --set '{item}': the value is not a YAML scalar; quote "
                          f"strings, e.g. --set run.output_dir=runs/x") from None
    if isinstance(value, dict):
        raise ConfigError(f"malformed --set '{item}': the value must be a scalar or a list, "
                          f"not a mapping")
    if _is_str_key(key) and value is not None and not isinstance(value, (str, list)):
        value = text.strip()  # run.output_dir=2024 or data.root=1e3 mean the text itself
    return key, value


def _flatten(data: dict, source: str) -> list[tuple[str, Any]]:
    out = []
    for section, body in data.items():
        if not isinstance(section, str):
            raise ConfigError(f"{source}: section name {_show(section)} is not a string")
        if section not in SECTIONS:
            raise _unknown(section if body is None or not isinstance(body, dict) or not body
                           else f"{section}.{next(iter(body))}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys, not "
                              f"{_show(body)}")
        for name, value in body.items():
            out.append((f"{section}.{name}", value))
    return out


def build(data: dict | None = None, overrides: list[str] | None = None,
          source: str = "config") -> Config:
    """Build a validated Config from a nested dict plus ``key=value`` overrides. Keys left
    null stay null: :func:`sslkit.methods.resolve.resolved` fills them."""
    tree: dict[str, dict] = {}
    for key, value in _flatten(data or {}, source):
        _set_value(tree, key, value)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_value(tree, key, value)
    sections = {name: cls(**tree.get(name, {})) for name, cls in SECTIONS.items()}
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def load(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (YAML) and apply ``overrides``; ``path=None`` starts from the defaults."""
    data = read_yaml_file(path) if path is not None else {}
    return build(data, overrides, source=os.fspath(path) if path is not None else "defaults")


def save(cfg: Config, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(cfg.to_yaml())


def demo_config_path() -> str:
    """configs/demo.yaml from the working directory, else from the source checkout."""
    if os.path.isfile(DEMO_CONFIG):
        return DEMO_CONFIG
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), DEMO_CONFIG)
    return here if os.path.isfile(here) else DEMO_CONFIG
