"""The options machinery of every CLI: a dataclass declares each option once, with its default, help,
choices and group; argparse (and, for training, YAML) are built from it, and checks live in the
dataclass's `__post_init__`. The schemas themselves are in `carotid.training.config` (with its option
groups) and `carotid.commands`.

Imports nothing heavy (no torch, numpy or sklearn), so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from carotid.core.errors import UserError


def opt(
    default: Any,
    help: str,
    choices: Sequence[Any] | None = None,
    group: str = "training",
    *,
    metavar: str | None = None,
    required: bool = False,
    positional: bool = False,
) -> Any:
    """A dataclass field carrying its argparse help, choices, section and metavar.

    A list default makes a repeatable option (`--flag A --flag B`, a YAML list); `positional` an argument
    without a flag (e.g. the two folders of carotid-compare)."""
    metadata = {
        "help": help,
        "choices": choices,
        "group": group,
        "metavar": metavar,
        "required": required,
        "positional": positional,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def like(schema: type, name: str, default: Any = None, help: str | None = None, group: str | None = None) -> Any:
    """The option `name` of another schema (same help, choices and group), with this CLI's default and help.

    Lets evaluate and predict share train's definitions instead of copying them."""
    source = {f.name: f for f in dataclasses.fields(schema)}[name]
    meta = source.metadata
    if isinstance(default_of(source), list) and default is None:
        default = []
    return opt(default, help or meta["help"], meta["choices"], group or meta["group"], metavar=meta["metavar"])


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Field types and YAML values
# ---------------------------------------------------------------------------------------------


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    # get_type_hints evaluates every annotation of the class: once per schema, not once per field and parser.
    return typing.get_type_hints(schema)


def _choices(schema: type, name: str) -> Sequence[Any] | None:
    return {f.name: f for f in dataclasses.fields(schema)}[name].metadata["choices"]


def field_type(schema: type, name: str) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a schema field; a `list[X]` field gives X."""
    hint = _type_hints(schema)[name]
    if typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def is_list(schema: type, name: str) -> bool:
    return typing.get_origin(_type_hints(schema)[name]) is list


def coerce(schema: type, name: str, value: Any, source: str) -> Any:
    """Check a value read from YAML against the field's type; ints are accepted for floats."""
    if is_list(schema, name):
        values = value if isinstance(value, list) else ([] if value is None else [value])
        return [_coerce_one(schema, name, v, source) for v in values]
    return _coerce_one(schema, name, value, source)


def _coerce_one(schema: type, name: str, value: Any, source: str) -> Any:
    base, optional = field_type(schema, name)
    where = f"{source}: '{name}'"
    if value is None:
        if optional:
            return None
        if "none" in (_choices(schema, name) or ()):
            return "none"  # an empty value of an option that has a 'none' choice (report_to: null in old runs)
        raise UserError(f"{where} cannot be empty", f"give a {base.__name__} or remove the key")
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}", "write true or false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}", "write a whole number")
        out = value
    elif base is float:
        out = _as_float(value)
        if out is None:
            raise UserError(f"{where} must be a number, got {value!r}", "write a number such as 1.0e-4")
    else:
        choices = _choices(schema, name)
        # YAML 1.1 reads an unquoted no/off (yes/on) as false (true): `mixed_precision: no`, as Accelerate's own
        # configs write it, means the choice 'no'.
        if isinstance(value, bool) and choices is not None and ("yes" if value else "no") in choices:
            value = "yes" if value else "no"
        if isinstance(value, bool):
            raise UserError(
                f"{where} must be text, got {value!r} (YAML reads an unquoted no, off, yes or on as a boolean)",
                "write the value in quotes, e.g. 'no'",
            )
        if not isinstance(value, (str, int, float)):
            raise UserError(f"{where} must be text, got {value!r}", "write a single value")
        out = str(value)
    choices = _choices(schema, name)
    if choices is not None and out not in choices:
        raise UserError(
            f"{where} is {value!r}, not one of {', '.join(map(str, choices))}", "use one of the listed values"
        )
    return out


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string: accept it when it is a number
        try:
            return float(value)
        except ValueError:
            return None
    return None


def read_yaml_defaults(schema: type, path: str, example: str) -> dict[str, Any]:
    """Options from a YAML file; keys may use '-' or '_'. A run's config.yaml repeats that run."""

    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file not found: {path}", "check the --config path")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})", "fix the file's syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of option: value", f"see {example}")
    if isinstance(data.get("options"), dict) and "versions" in data:
        data = {k: v for k, v in data["options"].items() if k != "resume"}  # a run's config.yaml: repeat that run
    names = {f.name for f in dataclasses.fields(schema)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"{path}: unknown key '{key}'", f"see {example} for the option names")
        values[name] = coerce(schema, name, value, path)
    return values


# ---------------------------------------------------------------------------------------------
# argparse, built from the dataclass
# ---------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UserError, so bad flags get the same one-line error as everything else."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Python < 3.13 takes "-1e-3" for an option, so `--lr -1e-3` fails with "expected one argument";
        # argparse has no public setting for this, so its matcher is widened to numbers in e-notation.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)  # for error(): the value a flag was given
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> typing.NoReturn:
        found = re.match(r"argument (--[\w-]+).*: expected one argument", message)
        argv = getattr(self, "_argv", [])
        if found and found.group(1) in argv:
            after = argv[argv.index(found.group(1)) + 1 : argv.index(found.group(1)) + 2]
            # argparse takes '-DATA' for a flag; a real flag next (`--root-dir --epochs 3`) is a missing value.
            if after and after[0].startswith("-") and after[0].split("=")[0] not in self._option_string_actions:
                raise UserError(message, f"a value starting with '-' is written {found.group(1)}={after[0]}")
        raise UserError(message, f"see {self.prog} --help")


def _scalar(base: type, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names the type in its messages
    return parse


def build_parser(
    schema: type,
    prog: str,
    description: str,
    groups: dict[str, str],
    *,
    defaults: dict[str, Any] | None = None,
    suppress: bool = False,
    config_file: bool = False,
) -> ArgumentParser:
    """The parser of a schema. `suppress=True` leaves unset flags out (to see what was given)."""
    parser = ArgumentParser(
        prog=prog, description=description, allow_abbrev=False, argument_default=argparse.SUPPRESS if suppress else None
    )
    if config_file:
        parser.add_argument(
            "--config", metavar="FILE.yaml", help="YAML file whose keys replace the defaults below; flags still win."
        )
    sections = {key: parser.add_argument_group(title) for key, title in groups.items()}
    defaults = defaults or {}
    for f in dataclasses.fields(schema):
        base, optional = field_type(schema, f.name)
        meta = f.metadata
        default = defaults.get(f.name, default_of(f))
        section = sections[meta["group"]]
        if meta.get("positional"):
            many = {"nargs": "+"} if is_list(schema, f.name) else {}  # a list: one or more values
            section.add_argument(
                f.name, metavar=meta["metavar"], help=meta["help"], type=_scalar(base, optional), **many
            )
            continue
        # argparse %-formats help texts: a literal % ("95% CIs") must be doubled or --help crashes.
        kwargs: dict[str, Any] = {"help": meta["help"].replace("%", "%%"), "dest": f.name}
        if meta["required"] and not suppress:
            kwargs["required"] = True
        elif not suppress:
            kwargs["default"] = default
        if base is bool:
            section.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = _scalar(base, optional)
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        # A help text that already says its default (e.g. "default: the run's") gets no second one, and an
        # unset default (None: the option is simply not given) none at all.
        if not suppress and not meta["required"] and "default" not in meta["help"] and default is not None:
            kwargs["help"] += f" (default: {default})"
        if is_list(schema, f.name):
            # Flags given replace the default (argparse's append would add to it); repeat for several.
            kwargs["action"] = "append"
            kwargs.pop("default", None)
            kwargs["help"] += " Repeatable."
        metavar = meta["metavar"] or (f.name.upper() if meta["choices"] is None else None)
        section.add_argument(flag(f.name), metavar=metavar, **kwargs)
    return parser


def parse_options(
    schema: type,
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    groups: dict[str, str],
    *,
    config_file: bool = False,
    example: str = "",
) -> tuple[Any, set[str]]:
    """(options, names of the options given explicitly on the command line or in --config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    file_values: dict[str, Any] = {}
    if config_file:
        pre = ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv)
        file_values = read_yaml_defaults(schema, known.config, example) if known.config else {}
    args = vars(
        build_parser(schema, prog, description, groups, defaults=file_values, config_file=config_file).parse_args(argv)
    )
    given = set(
        vars(build_parser(schema, prog, description, groups, suppress=True, config_file=config_file).parse_args(argv))
    ) | set(file_values)
    given.discard("config")
    args.pop("config", None)
    for f in dataclasses.fields(schema):
        if is_list(schema, f.name) and args.get(f.name) is None:  # not given: the file's value or the default
            args[f.name] = list(file_values.get(f.name, default_of(f)))
    return schema(**args), given


def default_yaml(schema: type, groups: dict[str, str], header: list[str]) -> str:
    """A documented YAML of every option of `schema`, its help and its default."""

    lines = list(header)
    current = None
    for f in dataclasses.fields(schema):
        if f.metadata["group"] != current:
            current = f.metadata["group"]
            lines += ["", f"# --- {groups[current]} ---"]
        help_text = f.metadata["help"]
        if f.metadata["choices"] is not None:
            help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
        lines.append(f"# {help_text}")
        lines.append(yaml.safe_dump({f.name: default_of(f)}, allow_unicode=True, default_flow_style=False).strip())
    return "\n".join(lines) + "\n"
