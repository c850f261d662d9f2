"""The one config loader of every entry point: train, evaluate, push and the app.

Each command has a dataclass config; ``run_command`` reads it from, in rising
precedence, the dataclass defaults, environment variables (the app's ``VSE_*``,
which is how a Hugging Face Space sets it), an optional ``--config FILE`` (YAML
or JSON) and ``--key=value`` / ``--section.key=value`` arguments.  Every value is
checked against its field's type annotation and unknown keys are rejected, so a
typo never goes unnoticed: a refused value is one ``error: ...`` line and exit
status 2 (``vse.cli``).  ``--print-config`` prints the resolved config, ``--help``
lists every key with its type, default, older spelling and variable.

    load_config(TrainConfig, "configs/x.yaml", ["--stage1.optim.lr=1e-4"])

Why this module rather than a library such as draccus (0.11, the maintained
fork of pyrallis): draccus names the file flag ``--config_path``, has no
``--print-config``, no environment layer and no older-flag aliases, decodes
values with its own rules instead of YAML 1.1 (so ``mixed_precision: no`` and
today's overrides would read differently) and reports errors through argparse's
usage text; keeping every flag, file and test as it is would have meant wrapping
most of it.  Extending the loader the training CLI already had kept all of that
with one dependency fewer (PyYAML, which every entry point already has).

Command-line syntax: ``--key=value`` or ``--key value``; a bare ``--key`` sets a
boolean key to true; a key naming a mapping also takes ``NAME=VALUE`` items
(``--where split=test``, repeatable).  Values are read as YAML, except for text
keys, which take the text as written (so a revision ``0123`` stays ``"0123"``).
No code is evaluated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from vse.cli import EXIT_REFUSED, USER_ERRORS, error_line, run_cli

T = TypeVar("T")
NULL_WORDS = ("null", "~")  # YAML's spellings of "no value" for an optional text key
ENV_TRUE, ENV_FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # environment convention
REDACTED = "***"


class ConfigError(ValueError):
    """A config file, argument or environment variable does not fit the config dataclass."""


# ------------------------------------------------------------------ files and values


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def parse_yaml_value(raw: str) -> Any:
    """A command-line value as YAML (``1e-4``, ``false``, ``[a, b]``); text that is no YAML stays text."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def without_none(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); any other hint -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if len(options) < len(typing.get_args(hint)):
            return functools.reduce(operator.or_, options), True
    return hint, False


def parse_value(hint: Any, raw: str) -> Any:
    """A command-line or environment text for a key of type ``hint``: text keys keep it verbatim, others read YAML."""
    inner, optional = without_none(hint)
    if inner is str:
        return None if optional and raw in NULL_WORDS else raw
    return parse_yaml_value(raw)


def parse_env_value(hint: Any, raw: str, variable: str) -> Any:
    """An environment variable's text; booleans also take the usual 1/0 (``VSE_OAUTH=1``)."""
    if without_none(hint)[0] is bool:
        word = raw.strip().lower()
        if word in ENV_TRUE + ENV_FALSE:
            return word in ENV_TRUE
        raise ConfigError(f"{variable}={raw!r}: expected one of {', '.join(ENV_TRUE + ENV_FALSE)}")
    return parse_value(hint, raw)


def set_nested(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


# ------------------------------------------------------------------ checking against the dataclass


def _check_value(hint: Any, value: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` where lossless, else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return build_dataclass(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return [_check_value(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_hint, item_hint = typing.get_args(hint) or (Any, Any)
        return {
            _check_value(key_hint, key, where): _check_value(item_hint, item, f"{where}.{key}")
            for key, item in value.items()
        }
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _field_default(field_: dataclasses.Field) -> Any:
    """The field's default value; ``dataclasses.MISSING`` when the field is required."""
    if field_.default_factory is not dataclasses.MISSING:
        return field_.default_factory()
    return field_.default


def _default_section(field_: dataclasses.Field) -> dict[str, Any] | None:
    """The field's default as a mapping when it is a nested config section."""
    default = _field_default(field_)
    return dataclasses.asdict(default) if dataclasses.is_dataclass(default) else None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _unknown_keys_error(keys: list[str], known: Sequence[str], where: str) -> ConfigError:
    prefix = f"{where}." if where else ""
    return ConfigError(f"unknown config keys {[prefix + k for k in keys]}; known: {sorted(known)}")


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Instantiate ``cls`` from a mapping, strictly: unknown keys, missing required keys and bad types fail.

    A partial mapping for a nested section updates that section's defaults (so
    ``--data.validation.path=x`` keeps the validation split's default split name).
    """
    hints = typing.get_type_hints(cls)
    fields = _init_fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _unknown_keys_error(unknown, list(fields), where)
    prefix = f"{where}." if where else ""
    missing = [
        prefix + name for name, f in fields.items() if name not in data and _field_default(f) is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required config keys {missing}")
    values = {}
    for key, value in data.items():
        default = _default_section(fields[key])
        if default is not None and isinstance(value, dict):
            value = _merge(default, value)
        values[key] = _check_value(hints[key], value, prefix + key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def key_hint(cls: type, keys: list[str]) -> Any:
    """The type annotation of the dotted key ``keys`` in ``cls`` (inside a mapping: its value type).

    Raises:
        ConfigError: a key ``cls`` does not have, named as ``build_dataclass`` would.
    """
    hint: Any = cls
    for depth, key in enumerate(keys):
        inner = without_none(hint)[0]
        if dataclasses.is_dataclass(inner):
            fields = _init_fields(inner)
            if key not in fields:
                raise _unknown_keys_error([key], list(fields), ".".join(keys[:depth]))
            hint = typing.get_type_hints(inner)[key]
        elif typing.get_origin(inner) is dict:
            hint = (typing.get_args(inner) or (Any, Any))[1]
        else:
            return Any  # below a value of no fixed shape: the value's own check decides
    return hint


def is_mapping_hint(hint: Any) -> bool:
    inner = without_none(hint)[0]
    return inner is dict or typing.get_origin(inner) is dict


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] | None = None) -> T:
    """The config from ``path`` (YAML or JSON; optional) with ``--key=value`` overrides."""
    arguments = read_arguments(cls, overrides or [], CommandLine(prog=cls.__name__), control=False)
    return resolve_config(cls, arguments, {}, path)


# ------------------------------------------------------------------ command lines


@dataclass(frozen=True)
class CommandLine:
    """What one entry point's command line adds to its config dataclass."""

    prog: str
    description: str = ""
    # Other spellings of keys (dashes or underscores), e.g. {"data": "data.path"} for ``--data PATH``.
    aliases: Mapping[str, str] = field(default_factory=dict)
    # Environment variables that set keys below the config file and the command line: key -> variable.
    environment: Mapping[str, str] = field(default_factory=dict)
    epilog: str = ""


@dataclass
class Arguments:
    """A command line split into the loader's own flags and config overrides (dotted key, parsed value)."""

    overrides: list[tuple[list[str], Any]] = field(default_factory=list)
    config_file: str | None = None
    print_config: bool = False
    debug: bool = False
    help: bool = False


CONTROL_SWITCHES = ("print_config", "debug", "help")


def mapping_override(cls: type, keys: list[str], raw: str, flag: str) -> tuple[list[str], Any]:
    """A mapping key takes a whole YAML mapping (``--data.where={split: test}``) or one item (``--where split=test``)."""
    whole = parse_yaml_value(raw)
    if isinstance(whole, dict):
        return keys, whole
    name, equals, item = raw.partition("=")
    if not equals or not name:
        raise ConfigError(f"--{flag} takes NAME=VALUE items, got {raw!r}")
    item_keys = [*keys, name]
    return item_keys, parse_value(key_hint(cls, item_keys), item)


def read_arguments(cls: type, argv: Sequence[str], command_line: CommandLine, *, control: bool = True) -> Arguments:
    """Split ``argv`` into config overrides and (when ``control``) ``--config``/``--print-config``/``--debug``/``--help``.

    Raises:
        ConfigError: a stray word, an unknown key, or a value-taking key given none.
    """
    arguments = Arguments()
    position = 0
    while position < len(argv):
        token = argv[position]
        position += 1
        if control and token == "-h":
            arguments.help = True
            continue
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}: options look like --key=value")
        flag, has_value, raw = token[2:].partition("=")
        name = flag.replace("-", "_")
        if control and name in CONTROL_SWITCHES and not has_value:
            setattr(arguments, name, True)
            continue
        keys = (command_line.aliases.get(name) or name).replace("-", "_").split(".")
        hint = str if control and name == "config" else key_hint(cls, keys)
        if not has_value:
            if without_none(hint)[0] is bool:
                raw = "true"
            elif position < len(argv) and not argv[position].startswith("--"):
                raw, position = argv[position], position + 1
            else:
                raise ConfigError(f"--{flag} needs a value: --{flag}=VALUE")
        if control and name == "config":
            arguments.config_file = raw
            continue
        if is_mapping_hint(hint):
            arguments.overrides.append(mapping_override(cls, keys, raw, flag))
        else:
            arguments.overrides.append((keys, parse_value(hint, raw)))
    return arguments


def environment_values(cls: type, command_line: CommandLine, environ: Mapping[str, str]) -> dict[str, Any]:
    """The keys set by environment variables; an empty variable counts as unset (a Space's blank field)."""
    data: dict[str, Any] = {}
    for dotted, variable in command_line.environment.items():
        raw = environ.get(variable, "")
        if not raw.strip():
            continue
        keys = dotted.split(".")
        hint = key_hint(cls, keys)
        value = parse_env_value(hint, raw, variable)
        set_nested(data, keys, _check_value(hint, value, f"{dotted} (from {variable})"))
    return data


def resolve_config(
    cls: type[T], arguments: Arguments, environment: dict[str, Any], config_file: str | Path | None = None
) -> T:
    """Defaults, then ``environment``, then the config file, then the command line's overrides."""
    data = dict(environment)
    path = arguments.config_file or config_file
    if path:
        data = _merge(data, read_config_file(path))
    for keys, value in arguments.overrides:
        set_nested(data, keys, value)
    return build_dataclass(cls, data)


def config_json(config: Any) -> str:
    """The resolved config as indented JSON; fields marked ``metadata={"secret": True}`` are masked."""
    return json.dumps(_redacted(config), indent=2, default=str)


def _redacted(config: Any) -> Any:
    if not dataclasses.is_dataclass(config):
        return config
    shown = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        shown[f.name] = REDACTED if f.metadata.get("secret") and value else _redacted(value)
    return shown


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def key_lines(cls: type, command_line: CommandLine, prefix: str = "", section: Any = None) -> list[str]:
    """One help line per key: ``--key=TYPE  help (default ...; also --alias; env VAR)``.

    ``section`` is the default of the section ``cls`` fills, whose values may differ from
    the class's own defaults (evaluate's split defaults to "test", a source's to "train").
    """
    spellings: dict[str, list[str]] = {}
    for alias, target in command_line.aliases.items():
        spellings.setdefault(target, []).append("--" + alias.replace("_", "-"))
    hints = typing.get_type_hints(cls)
    lines = []
    for name, f in _init_fields(cls).items():
        key, hint = prefix + name, hints[name]
        default = _field_default(f) if section is None else getattr(section, name)
        if dataclasses.is_dataclass(without_none(hint)[0]):
            section_default = None if default is dataclasses.MISSING else default
            lines.extend(key_lines(without_none(hint)[0], command_line, key + ".", section_default))
            continue
        shown_default = "required" if default is dataclasses.MISSING else f"default {json.dumps(default, default=str)}"
        notes = [shown_default, *[f"also {s}" for s in spellings.get(key, [])]]
        if key in command_line.environment:
            notes.append(f"env {command_line.environment[key]}")
        text = f.metadata.get("help", "")
        lines.append(f"  --{key}={_type_name(hint)}  {text}{' ' if text else ''}({'; '.join(notes)})")
    return lines


def help_text(cls: type, command_line: CommandLine) -> str:
    usage = f"usage: {command_line.prog} [--config FILE] [--print-config] [--debug] [--key=value ...]"
    parts = [usage, command_line.description] if command_line.description else [usage]
    parts.append(
        "options:\n  --config FILE  YAML or JSON file of config values\n"
        "  --print-config  print the resolved config and exit\n"
        "  --debug  on an error, show the full traceback instead of one line\n  -h, --help  show this help and exit"
    )
    layers = ["defaults", "environment", "--config file", "command line"]
    precedence = " < ".join(layers if command_line.environment else [layers[0], *layers[2:]])
    parts.append(f"config keys (--key=value or --key value; {precedence}):\n" + "\n".join(key_lines(cls, command_line)))
    if command_line.epilog:
        parts.append(command_line.epilog)
    return "\n\n".join(parts)


@dataclass
class Command(Generic[T]):
    """A parsed command: its resolved config and the loader's own flags."""

    config: T
    arguments: Arguments


def read_command(
    cls: type[T], argv: Sequence[str], command_line: CommandLine, environ: Mapping[str, str] | None = None
) -> Command[T] | None:
    """The command ``argv`` asks for (None for ``--help``); raises ConfigError for a refused one."""
    arguments = read_arguments(cls, argv, command_line)
    if arguments.help:
        return None
    environment = environment_values(cls, command_line, os.environ if environ is None else environ)
    return Command(resolve_config(cls, arguments, environment), arguments)


def run_command(
    cls: type[T],
    argv: Sequence[str] | None,
    command_line: CommandLine,
    work: Callable[[T], int | None],
    *,
    expected: tuple[type[BaseException], ...] = USER_ERRORS,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Read the config of ``cls`` from ``argv`` (default: ``sys.argv[1:]``) and run ``work`` on it.

    Returns 0 after ``--help`` or ``--print-config``; 2 with one ``error:`` line
    for a refused config (raised instead under ``--debug``); else ``work``'s
    status as ``vse.cli.run_cli`` gives it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command = read_command(cls, argv, command_line, environ)
    except ConfigError as err:
        if "--debug" in argv:
            raise
        print(error_line(err), file=sys.stderr)
        return EXIT_REFUSED
    if command is None:
        print(help_text(cls, command_line))
        return 0
    if command.arguments.print_config:
        print(config_json(command.config))
        return 0
    return run_cli(lambda: work(command.config), debug=command.arguments.debug, expected=expected)
