"""The train/ scripts' command line: `--help` listing every key with its default, and ordinary mistakes
(a misspelled key, a missing or damaged file, data that cannot fill a batch, a run folder that belongs to
another run) ended with one line `error: ...` and exit status 1 instead of a traceback. `--debug` keeps
the traceback. Anything else (a bug) still prints its traceback.

    cfg = command_line(DEFAULTS, __doc__)      # first thing in a script
"""
from __future__ import annotations

import os
import re
import sys

from ..errors import UserError
from .config import load_config, parse_overrides

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
    return str(value)


def _comments(script: str | None) -> dict:
    """{key: comment} from the DEFAULTS = dict(...) block of the script's source (comments on its lines,
    and section comments above them); {} when the source is not readable."""
    try:
        lines = open(script, encoding="utf-8").read().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("DEFAULTS = dict("))
    except (OSError, TypeError, StopIteration):
        return {}
    notes, section = {}, None
    for line in lines[start + 1:]:
        if line.startswith(")"):
            break
        code, _, comment = line.partition("#")
        keys = re.findall(r"(\w+)\s*=", code)
        if not keys and comment:
            section = comment.strip()
            continue
        for k in keys:
            notes[k] = ("", section)
        if keys and comment.strip():
            notes[keys[-1]] = (comment.strip(), section)
    return notes


def usage(defaults: dict, doc: str | None = None, script: str | None = None) -> str:
    """The --help text: the script's docstring, then every key with its default (and its comment)."""
    out = [(doc or "").strip(), "", "Keys (in --config FILE.yaml, or as --key value; default shown):"]
    notes, last_section = _comments(script), None
    width = max(len(k) + len(_default_text(v)) for k, v in defaults.items()) + 4
    for key, value in defaults.items():
        comment, section = notes.get(key, ("", None))
        if section and section != last_section:
            out.append(f"  # {section}")
            last_section = section
        text = f"--{key.replace('_', '-')} {_default_text(value)}"
        out.append(f"  {text:<{width}}" + (f"  # {comment}" if comment else "").rstrip())
    out.append(f"  {'--debug':<{width}}  # full tracebacks instead of one-line errors")
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


def command_line(defaults: dict, doc: str | None = None, argv=None, script: str | None = None):
    """The run's Config from argv (default sys.argv[1:]); handles --help and --debug (cfg.debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = script or (sys.argv[0] if sys.argv and os.path.isfile(sys.argv[0]) else None)
    debug, argv = _wants_debug(argv)
    install_error_handler(debug)
    if "-h" in argv or "--help" in argv:
        print(usage(defaults, doc, script))
        raise SystemExit(0)
    parse_overrides(argv)  # syntax errors first, so they read as such
    cfg = load_config(defaults, argv)
    cfg["debug"] = debug
    return cfg
