"""Reading a run configuration: YAML files, dotted ``section.key=value`` overrides, type checks naming the field.

This module knows no section: the dataclasses and :func:`sadcl.config.load_config` (which uses :func:`read_config`)
live in ``sadcl.config``, which imports this module and re-exports :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "from_dict", "override_error", "override_value", "plain", "read_config"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 (PyYAML) reads ``1e-4`` and ``1.0e9`` as strings; numbers in exponent form are floats here."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?\.[0-9_]+[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_config(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """A YAML config file (or the defaults) with ``section.key=value`` overrides applied, as plain data.

    Override values are parsed as YAML scalars/lists (``true``, ``1e-4``, ``[1, 2]``, ``null``), except where YAML
    would not keep the text as typed (:func:`override_value`): ``data.options.label_sep=#`` is the string ``"#"``,
    not a comment. :func:`sadcl.config.load_config` turns the result into a ``Config``.

    Returns:
        ``(sections, source)``: the merged sections and what to call them in messages (the file, or "defaults").
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        try:
            data = _yaml_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, loss, data, optim, train)")
    file_data = data.get("data") if isinstance(data.get("data"), dict) else {}
    file_format = file_data.get("format")
    new_format = next(
        (
            override_value(item, item.partition("=")[2])
            for item in reversed(overrides or [])
            if item.partition("=")[0] == "data.format"
        ),
        file_format,
    )
    if file_format and new_format != file_format and "options" in file_data:
        # Reader options belong to the file's reader (e.g. the demo's MOM-30 sizes): another reader starts without
        # them, and any data.options.* override applies on top.
        file_data["options"] = {}
    file_model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if file_format and new_format != file_format and "num_classes" in file_model:
        # So does the class count (the demo's 30 is MOM-30's): another dataset's comes from its data, unless an
        # override gives one (then it is checked against the data).
        del file_model["num_classes"]
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.epochs=10")
        value = override_value(item, raw)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    if path is not None and file_data and not (data.get("data") or {}).get("format"):
        # The default reader is the built-in MOM-30, generated on first use (hundreds of MB): a config that describes
        # its own data must say which reader, rather than silently get a generated benchmark.
        raise ConfigError(
            f"{path}: the data section has no 'format' (e.g. format: manifest, coco, voc, mom30; or "
            "the override data.format=...)"
        )
    return data, source


def override_error(error: ConfigError, overrides: list[str] | None, source: str) -> ConfigError | None:
    """The error naming the override that set the offending key (the last one wins, as in the merge), or None when
    no override did (then the file is to blame)."""
    msg = str(error)
    for item in reversed(overrides or []):
        key = item.partition("=")[0]
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", msg):
            return ConfigError(f"override {item!r}: {msg.removeprefix(source + ': ')}")
    return None


_NULLS = ("null", "Null", "NULL", "~")


def override_value(item: str, raw: str) -> Any:
    """The value of one ``key=value`` override: ``raw`` read as YAML when YAML keeps what was typed, else the text.

    Shells hand over ``#``, ``|``, ``&``, ``*`` or ``a # b`` unquoted, and YAML reads them as a comment (null), a
    block scalar (empty), an anchor or an alias: a separator such as ``data.options.label_sep=#`` would silently
    become "split on spaces". Such a value is taken as the string typed. Quoted text (``'#'``) and structured values
    (``[1, 2]``, ``{a: 1}``) stay YAML; a broken one of those is an error that says how to quote.
    """
    if raw == "":
        return None
    text = raw.strip()
    try:
        value = _yaml_load(raw)
    except yaml.YAMLError as e:
        if text.startswith(("[", "{", "'", '"')):
            problem = " ".join(str(e).split())
            raise ConfigError(
                f"override {item!r}: cannot parse value ({problem}); quote a literal string for the shell and YAML, "
                f"e.g. {item.partition('=')[0]}=\"'{raw}'\" in bash"
            ) from None
        return raw
    if value is None and text not in _NULLS:
        return raw  # `#...` is a YAML comment; `` `` (spaces only) is no value: the text as typed
    if isinstance(value, str) and value != text and not text.startswith(("'", '"', "!")):
        return raw  # `|`, `>` (block scalars) and `a # b` (comment) would lose what was typed
    if isinstance(value, (list, dict)) and not text.startswith(("[", "{")):
        return raw  # `-`, `?`, `a: b`: block-style YAML structure is never meant on a command line
    return value


def plain(value: Any) -> Any:
    """Dicts, lists and scalars only (tuples become lists, keys strings): what YAML and ``weights_only`` take."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build and validate the dataclass ``cls`` from nested plain data (``source`` names the origin in errors)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; valid: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, source, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}", source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a YAML value against a field's type, converting int -> float where the field is a float."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: {key} must not be null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be finite, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        item_hint = args[0] if args else Any
        items = [_coerce(v, item_hint, f"{key}[{i}]", source) for i, v in enumerate(value)]
        if origin is tuple and args and args[-1] is not Ellipsis and len(items) != len(args):
            raise ConfigError(f"{source}: {key} must have {len(args)} items, got {len(items)}")
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    return value
