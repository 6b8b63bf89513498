"""Run configuration: typed keys declared once, then a YAML file, then `--key value` overrides.

A script declares its keys as one dataclass: each field's type, default, and the docstring under it (its
help, shown by `--help`):

    @dataclass
    class TrainKeys:
        batch_size: int = 32
        \"\"\"images per GPU\"\"\"
        lr: Optional[float] = None
        \"\"\"peak learning rate; null -> the paper's rule\"\"\"

    cfg = load_config(TrainKeys, ["--config", "run.yaml", "--lr", "0.1"])    # Config: cfg.lr == 0.1

jsonargparse (a maintained typed-config library) checks every value against its field's type: Optional[X]
takes null or an X, Literal[...] one of its values, Tuple[float, float] two numbers, a plain type never
null. This module adds what the scripts promised before it: keys spelled with dashes or underscores
(`--batch-size 32` == `--batch_size=32`, in YAML too), a bare `--flag` meaning true, bools from 1/0, ints
from integral spellings (1e6, 2.0), and every mistake as one ConfigError line naming the key, the
expected type and, for an unknown key, the closest declared one.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import typing
from typing import Any, Iterable, NamedTuple

import yaml

from ..errors import ConfigError

__all__ = ["Config", "ConfigError", "Key", "config_keys", "describe_type", "expected_text", "load_config",
           "parse_overrides"]


class Config(dict):
    """A dict whose keys also read as attributes (cfg.lr): the run's settings, as run.json stores them."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class Key(NamedTuple):
    name: str
    type: Any
    default: Any
    help: str


@functools.lru_cache(maxsize=None)
def config_keys(schema: type) -> tuple[Key, ...]:
    """The declared keys of a config dataclass, in declaration order, each with its docstring as help."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"config schema must be a dataclass, got {schema!r}")
    import docstring_parser  # reads the attribute docstrings (PEP 257) under each field

    try:
        params = docstring_parser.parse_from_object(schema).params
    except (OSError, TypeError):  # no source to read them from (a frozen or generated class): no help texts
        params = []
    helps = {p.arg_name: " ".join(p.description.split()) for p in params if p.description}
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        if f.default is dataclasses.MISSING:
            raise TypeError(f"{schema.__name__}.{f.name}: every config key needs a default")
        keys.append(Key(f.name, hints[f.name], f.default, helps.get(f.name, "")))
    return tuple(keys)


@functools.lru_cache(maxsize=None)
def _parser(schema: type):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, default_env=False, print_config=None)
    parser.add_class_arguments(schema)
    return parser


# ---------------------------------------------------------------- type names for --help and errors
def _args(tp) -> tuple:
    return typing.get_args(tp)


def _optional_of(tp):
    """X for Optional[X] (Union[X, None]), else None."""
    if typing.get_origin(tp) is typing.Union and type(None) in _args(tp):
        rest = [a for a in _args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return None


def describe_type(tp) -> str:
    """A short name for --help: int, float, bool, str, [float, float], none | bf16, int | null."""
    inner = _optional_of(tp)
    if inner is not None:
        return f"{describe_type(inner)} | null"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in _args(tp))
    if origin in (tuple, list):
        args = _args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{describe_type(args[0])}, ...]"
        return "[" + ", ".join(describe_type(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def expected_text(tp) -> str:
    """What a value of this type looks like, for an error: 'a number or null', 'one of none, bf16', ..."""
    inner = _optional_of(tp)
    if inner is not None:
        return f"{expected_text(inner)} or null"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in _args(tp))
    if origin in (tuple, list):
        args = _args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])} like [1, 2]"
        samples = {int: ["1", "2", "3"], float: ["0.9", "0.999", "0.5"]}
        example = ", ".join(samples.get(a, ["x"] * 3)[i % 3] for i, a in enumerate(args))
        return f"a list of {len(args)} {_plural(args[0])} like [{example}]"
    return _WORDS.get(tp, f"a {describe_type(tp)}")


def _plural(tp) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(tp, "values")


# ---------------------------------------------------------------- values
def _base_type(tp):
    inner = _optional_of(tp)
    return inner if inner is not None else tp


def _allows_null(tp) -> bool:
    return _optional_of(tp) is not None


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("null", "~", "Null", "NULL"))


def _prepare(value: Any, tp) -> Any:
    """The spellings the scripts always took that the library does not: bools from 1/0/on/off, ints from
    integral floats and exponent notation (1e6, 2.0, 3_500)."""
    base = _base_type(tp)
    if base is bool:
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("1", "on", "0", "off"):
            return value.strip().lower() in ("1", "on")
    if base is int and not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)  # exact, however large
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                return value
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            return int(number)
    return value


def _plain(value: Any) -> Any:
    """Builtin types only (checkpoints are loaded with weights_only, run.json is JSON); tuples as lists."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _convert(schema: type, key: Key, value: Any, where: str) -> Any:
    """value (a YAML value, or a string from the command line) checked and converted to the key's type."""
    wrong = ConfigError(f"{where}: key {key.name!r}: expected {expected_text(key.type)}, got {_show(value)}")
    if _is_null(value) and key.type is not str:
        if not _allows_null(key.type):
            raise wrong
        return None
    try:
        parsed = _parser(schema).parse_object({key.name: _prepare(value, key.type)}, defaults=False)
    except (argparse.ArgumentError, ValueError, TypeError):
        raise wrong from None
    result = getattr(parsed, key.name)
    if result is None and not _allows_null(key.type):  # the library lets None through for any type
        raise wrong
    if _base_type(key.type) is float and isinstance(result, float) and math.isnan(result):
        raise wrong
    return _plain(result)


def _norm_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _check_key(schema: type, key: str, where: str, dashes: bool) -> Key:
    keys = {k.name: k for k in config_keys(schema)}
    name = _norm_key(key)
    if name not in keys:
        close = difflib.get_close_matches(name, list(keys), n=1)
        shown = (close[0].replace("_", "-") if dashes else close[0]) if close else None
        raise ConfigError(f"{where}: unknown key {key!r}" + (f" (did you mean {shown!r}?)" if shown else ""))
    return keys[name]


# ---------------------------------------------------------------- sources
def parse_overrides(argv: Iterable[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """['--config', 'a.yaml', '--lr', '0.1', '--amp=bf16'] -> ('a.yaml', [('lr', '0.1'), ('amp', 'bf16')]).

    A key followed by another key (or by nothing) reads as 'true', so `--sync-bn` switches a bool on.
    """
    argv = list(argv)
    config_path, pairs, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2):
            key, value = arg[2:], argv[i + 1]
            i += 2
        else:
            key, value = arg[2:], "true"
            i += 1
        if _norm_key(key) == "config":
            config_path = value
        else:
            pairs.append((key, value))
    return config_path, pairs


def read_yaml(path: str) -> dict:
    """A YAML file's mapping of key: value ({} for an empty file); ConfigError if it is not one."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:  # one line: what is wrong, and where
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"config file {path!r} is not valid YAML: {problem}{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of key: value")
    return data


def load_config(schema: type, argv: Iterable[str] = (), config_path: str | None = None) -> Config:
    """The schema's defaults <- YAML file (--config FILE, or config_path) <- --key value overrides, each
    value checked against its key's declared type. cfg.config is the YAML file's path (None without)."""
    cfg = Config({k.name: _plain(k.default) for k in config_keys(schema)})
    argv_path, pairs = parse_overrides(argv)
    config_path = argv_path or config_path
    if config_path:
        where = f"config file {config_path!r}"
        for key, value in read_yaml(config_path).items():
            k = _check_key(schema, str(key), where, dashes=False)
            cfg[k.name] = _convert(schema, k, value, where)
    for key, value in pairs:
        k = _check_key(schema, key, "command line", dashes=True)
        cfg[k.name] = _convert(schema, k, value, "command line")
    cfg["config"] = config_path
    return cfg
