"""Run configuration: built-in defaults, then a YAML file, then `--key value` overrides.

    cfg = load_config(DEFAULTS, sys.argv[1:])      # argv may hold --config FILE.yaml and --key value pairs

Keys are spelled with underscores or dashes alike (`--batch-size 32` == `--batch_size=32`). Every key must
exist in the defaults (a typo is an error naming the closest key), and every value is converted to the type
of its default (bools accept true/false/yes/no/1/0; ints accept 1e6 or 1_000_000 when integral). A default of
None takes any YAML scalar or list.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterable

import yaml

from ..errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_overrides"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class Config(dict):
    """A dict whose keys also read as attributes (cfg.lr); keys are the defaults' keys."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _norm_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """value (a YAML scalar or a string from the command line) converted to the type of default."""
    where = f"config key {key!r}"
    if default is None:
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        if isinstance(parsed, str):  # YAML 1.1 reads 1e30 as a string; a number was meant
            for number in (int, float):
                try:
                    return number(parsed.replace("_", ""))
                except ValueError:
                    pass
        return parsed
    if value is None or (isinstance(value, str) and not isinstance(default, str)
                         and value.strip().lower() in ("null", "none", "~")):
        return None  # an explicit null turns an option off (e.g. steps: null -> use total_images)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", "")) if not isinstance(value, float) else value
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(str(value).replace("_", "")) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, (list, tuple)):
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(parsed, (list, tuple)):
            raise ConfigError(f"{where}: expected a list like [1, 2], got {value!r}")
        return list(parsed)
    if isinstance(default, str):
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: defaults of type {type(default).__name__} are not supported")


def _check_key(key: str, defaults: dict, source: str) -> str:
    k = _norm_key(key)
    if k not in defaults:
        close = difflib.get_close_matches(k, list(defaults), n=1)
        hint = f" (did you mean {close[0].replace('_', '-')!r}?)" if close else ""
        raise ConfigError(f"{source}: unknown key {key!r}{hint}")
    return k


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


def load_config(defaults: dict, argv: Iterable[str] = (), config_path: str | None = None) -> Config:
    """defaults <- YAML file (--config or config_path) <- --key value overrides, each value type-checked."""
    cfg = Config({_norm_key(k): v for k, v in defaults.items()})
    argv_path, pairs = parse_overrides(argv)
    config_path = argv_path or config_path
    if config_path:
        if not os.path.isfile(config_path):
            raise ConfigError(f"config file {config_path!r} does not exist")
        with open(config_path) as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {config_path!r} is not valid YAML: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {config_path!r} must hold a mapping of key: value")
        for key, value in data.items():
            k = _check_key(str(key), cfg, f"config file {config_path!r}")
            cfg[k] = _coerce(k, value, defaults_value(defaults, k))
    for key, value in pairs:
        k = _check_key(key, cfg, "command line")
        cfg[k] = _coerce(k, value, defaults_value(defaults, k))
    cfg["config"] = config_path
    return cfg


def defaults_value(defaults: dict, key: str) -> Any:
    for k, v in defaults.items():
        if _norm_key(k) == key:
            return v
    raise KeyError(key)
