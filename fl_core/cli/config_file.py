"""``--config FILE``: TOML settings for ``secagg serve``, ``secagg client`` and ``secagg run``.

Keys are the long flag names, with dashes or underscores (``deadline = 5.0``,
``join-timeout = 20``, ``insecure = false``). Top-level keys apply to every command that
has the flag; a ``[serve]``, ``[client]`` or ``[run]`` table applies to that command only
and wins over the top level. ``stage-deadline`` takes a table of stage = seconds. Flags on
the command line override the file (``stage-deadline``: per stage). An unknown key, a key
the command does not take or a value of the wrong type is an error that names the key. ::

    protocol = "secagg+"
    n = 8
    dim = 1000
    keys = "keys"

    [serve]
    bind = "tcp://0.0.0.0:7700"
    rounds = 5
    deadline = 10.0
    min-clients = 6
    stage-deadline = { unmask = 3.0 }

    [client]
    connect = "tcp://server:7700"
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "ConfigFileError", "load_config", "parse_with_config"]

COMMANDS = ("serve", "client", "run")
_NEVER = frozenset({"help", "config", "command"})


class ConfigFileError(ValueError):
    """The config file is unreadable, not TOML, or has an unknown key or a bad value."""


def _subparser(ap: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]  # type: ignore[no-any-return]
    raise KeyError(command)


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key (long flag without ``--``, dashes) -> action, for settable flags only."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in _NEVER or action.help == argparse.SUPPRESS:
            continue
        for opt in action.option_strings:
            if opt.startswith("--"):
                out[opt[2:]] = action
    return out


def _convert(key: str, action: argparse.Action, value: Any) -> Any:
    where = f"key {key!r}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where} must be true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigFileError(f"{where} must be a count >= 0, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, Mapping):  # stage-deadline = { unmask = 3.0 }
            items = [f"{k}={v}" for k, v in value.items()]
        elif isinstance(value, list):
            items = [str(v) for v in value]
        else:
            raise ConfigFileError(f"{where} must be a table or an array, got {value!r}")
        return [_one(where, action, item) for item in items]
    if isinstance(value, (Mapping, list)):
        raise ConfigFileError(f"{where} must be a single value, got {value!r}")
    return _one(where, action, value)


def _one(where: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(value, bool) and action.type is not None:
        raise ConfigFileError(f"{where}: expected a {getattr(action.type, '__name__', 'value')}, "
                              f"got {value!r}")
    try:
        out = action.type(value) if callable(action.type) else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigFileError(f"{where}: bad value {value!r}: {exc}") from None
    if action.choices is not None and out not in action.choices:
        raise ConfigFileError(f"{where}: {out!r} is not one of {list(action.choices)}")
    return out


def load_config(path: str | Path, command: str, parser: argparse.ArgumentParser,
                others: Mapping[str, argparse.ArgumentParser] | None = None) -> dict[str, Any]:
    """The argparse defaults ``path`` sets for ``command`` (whose parser is ``parser``).

    ``others`` (command -> parser) validates the other commands' tables too, so one file
    can serve every command and a typo anywhere in it is still caught.

    Raises:
        ConfigFileError: unreadable, not TOML, an unknown key (named) or a bad value.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config {path} is not valid TOML: {exc}") from None
    known = _actions(parser)
    parsers = dict(others or {})
    parsers[command] = parser
    every = set().union(*(_actions(p) for p in parsers.values()))
    top: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in doc.items():
        if key in COMMANDS:
            if not isinstance(value, dict):
                raise ConfigFileError(f"config {path}: [{key}] must be a table")
            table_known = _actions(parsers[key]) if key in parsers else known
            for sub_key, sub_value in value.items():
                name = sub_key.replace("_", "-")
                if name not in table_known:
                    raise ConfigFileError(
                        f"config {path}: unknown key {sub_key!r} in [{key}]")
                if key == command:
                    own[name] = sub_value
            continue
        name = key.replace("_", "-")
        if name not in every:
            raise ConfigFileError(f"config {path}: unknown key {key!r}")
        if name in known:
            top[name] = value
    merged = {**top, **own}
    try:
        return {known[k].dest: _convert(k, known[k], v) for k, v in merged.items()}
    except ConfigFileError as exc:
        raise ConfigFileError(f"config {path}: {exc}") from None


def parse_with_config(ap: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``ap.parse_args(argv)``, except that for a runtime command with ``--config FILE`` the
    file's values become the command's defaults first, so flags override the file (and a
    required flag such as the client's ``--id`` may come from the file). A bad file exits
    through ``ap.error`` (status 2) with a message naming the key."""
    argv = list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        path = pre.parse_known_args(argv)[0].config
        if path:
            parsers = {c: _subparser(ap, c) for c in COMMANDS}
            try:
                defaults = load_config(path, command, parsers[command], parsers)
            except ConfigFileError as exc:
                ap.error(str(exc))
            parsers[command].set_defaults(**defaults)
            for action in parsers[command]._actions:
                if action.dest in defaults:
                    action.required = False
    return ap.parse_args(argv)
