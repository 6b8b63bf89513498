"""The train/ scripts' command line: `--help` listing every declared key with its default, type and help,
and ordinary mistakes (a misspelled key, a value of the wrong type, a missing or damaged file, data that
cannot fill a batch, a run folder that belongs to another run) ended with one line `error: ...` and exit
status 1 instead of a traceback. `--debug` keeps the traceback. Anything else (a bug) still prints its
traceback.

    cfg = command_line(PretrainConfig, __doc__)      # first thing in a script's main()
"""
from __future__ import annotations

import shutil
import os
import sys
import textwrap

from ..errors import UserError
from .config import config_keys, describe_type, load_config, parse_overrides

__all__ = ["command_line", "usage", "install_error_handler", "is_user_error", "one_line"]

_ALWAYS_USER = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(e: BaseException) -> bool:
    """An error caused by the input (files, keys, data), to be shown as one line."""
    return isinstance(e, _ALWAYS_USER)


def one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(e).__name__


def install_error_handler(debug: bool = False) -> None:
    """sys.excepthook: user errors as `error: <message>` on stderr (exit status 1), unless debug."""
    def hook(etype, value, tb):
        if not debug and is_user_error(value):
            print(f"error: {one_line(value)}", file=sys.stderr, flush=True)
        elif not debug and isinstance(value, KeyboardInterrupt):
            print("interrupted", file=sys.stderr, flush=True)
        else:
            sys.__excepthook__(etype, value, tb)

    sys.excepthook = hook


def _default_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:_}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_default_text(v) for v in value) + "]"
    return str(value)


def usage(schema: type, doc: str | None = None, width: int | None = None) -> str:
    """The --help text: the script's docstring, then every declared key with its default, help and type
    (from the config dataclass: see wslfast.engine.config), under the section headings the schema names
    in SECTIONS ({first key of a section: heading})."""
    width = width or min(max(shutil.get_terminal_size((120, 24)).columns, 80), 140)
    keys = config_keys(schema)
    sections = getattr(schema, "SECTIONS", {})
    out = [(doc or "").strip(), "",
           "Keys, in a YAML file (--config FILE.yaml) or as --key value (dashes or underscores), with their "
           "defaults and (types):"]
    left = [f"--{k.name.replace('_', '-')} {_default_text(k.default)}" for k in keys]
    col = min(max(map(len, left)), 32) + 2
    for key, text in zip(keys, left):
        if key.name in sections:
            out.append(f"  # {sections[key.name]}")
        kind = f"({describe_type(key.type)})".replace(" ", "\0")  # the type is never split across lines
        wrapped = textwrap.wrap(f"{key.help} {kind}".strip(), max(40, width - 2 - col),
                                break_on_hyphens=False)  # "mini-batch" stays one word (--help is searched)
        lines = [line.replace("\0", " ") for line in wrapped]
        if len(text) > col - 2:  # too wide for the column: help from the next line
            out.append(f"  {text}")
            out.extend(" " * (2 + col) + line for line in lines)
            continue
        out.append(f"  {text:<{col}}{lines[0]}")
        out.extend(" " * (2 + col) + line for line in lines[1:])
    out.append(f"  {'--debug':<{col}}full tracebacks instead of one-line errors")
    return "\n".join(line.rstrip() for line in out)


def _wants_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """(--debug given, argv without it)."""
    rest, debug, i = [], False, 0
    while i < len(argv):
        a = argv[i]
        if a == "--debug" or a.startswith("--debug="):
            value = a.split("=", 1)[1] if "=" in a else "true"
            if "=" not in a and i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false", "1", "0"):
                value, i = argv[i + 1], i + 1
            debug = value.lower() in ("true", "1", "yes", "on")
        else:
            rest.append(a)
        i += 1
    return debug, rest


def command_line(schema: type, doc: str | None = None, argv=None):
    """The run's Config from argv (default sys.argv[1:]) against the schema (a config dataclass); handles
    --help and --debug (cfg.debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, argv = _wants_debug(argv)
    install_error_handler(debug)
    if "-h" in argv or "--help" in argv:
        try:
            print(usage(schema, doc), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    parse_overrides(argv)  # syntax errors first, so they read as such
    cfg = load_config(schema, argv)
    cfg["debug"] = debug
    return cfg
