"""The strict loader of ``params.yaml``: YAML in, the validated dataclasses of
``bmtard.config.schema`` out.

The file is read once and checked completely (every key present, none unknown or repeated,
types, finite numbers, ranges, the closed vocabularies of ``Literal`` fields) before any work; a
bad value stops with one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bmtard.config.schema import SECTIONS, Params
from bmtard.core.errors import ParamsError

#: the environment variable that names a stage's params file where it is not params.yaml (a
#: grid's experiment's, a teacher variant's: bmtard.experiments.workflow); --params wins over it
PARAMS_ENV = "BMTARD_PARAMS"
MISSING_KEY = "missing; every key must be given (params.yaml and presets/quick.yaml list them all)"

# --------------------------------------------------------------------------- loading


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file, every key required; raise ParamsError in one line."""
    path = Path(path)
    try:
        raw = _read_yaml(path)
        if raw is None:
            raise ParamsError(f"empty; required sections: {', '.join(SECTIONS)}")
        return parse_params(raw)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None


def parse_params(raw: Any, *, complete: bool = True) -> Params:
    """Validate a params mapping (as loaded from YAML) into ``Params``. Every key is required;
    with ``complete=False`` a missing key takes its default (for the stand-alone evaluate command,
    whose defaults are the paper's protocol)."""
    return _build(Params, raw, "", complete)


def _read_yaml(path: Path) -> Any:
    """The one YAML document in ``path`` (None if it holds none); ParamsError if it is not one."""
    text = _read_text(path)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ParamsError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ParamsError(f"not valid YAML ({where}{_first_line(e.problem or e)})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: e.g. a 5000-digit int
        raise ParamsError(f"not valid YAML ({_first_line(e) or type(e).__name__})") from None


def _read_text(path: Path) -> str:
    """The file's text; ParamsError for a directory, a missing or unreadable file, or not UTF-8."""
    if path.is_dir():
        raise ParamsError("is a directory; expected a YAML parameter file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ParamsError("parameter file not found") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ParamsError(f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(
            f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "expected a UTF-8 YAML text file"
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error (PyYAML keeps
    the last). Remembers each node's dotted path to name the mapping in the message."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.paths: dict[int, str] = {}  # id(node) -> dotted path

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        where = self.paths.get(id(node), "")
        seen = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # PyYAML refuses it below
            self.paths.setdefault(id(value_node), f"{where}.{key}" if where else str(key))
            if key in seen:
                place = f"in {where}" if where else "at the top level"
                raise ParamsError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {_show(key)} {place}; "
                    "each key may be given once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list:
        where = self.paths.get(id(node), "")
        for i, item in enumerate(node.value):
            self.paths.setdefault(id(item), f"{where}[{i}]")
        return super().construct_sequence(node, deep=deep)


def _build(cls: type, raw: Any, prefix: str, complete: bool) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{where} = {_show(raw)}: expected a mapping with keys {', '.join(fields)}"
        )
    unknown = sorted((k for k in raw if k not in fields), key=str)
    if unknown:
        raise ParamsError(
            f"{prefix}{_key(unknown[0])}: unknown key; allowed in {where}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], prefix + name, f.metadata, complete)
        elif complete and prefix:
            raise ParamsError(f"{prefix}{name}: {MISSING_KEY}")
        elif complete:
            raise ParamsError(f"{name}: missing section; required sections: {', '.join(fields)}")
    try:
        return cls(**values)
    except ParamsError as e:  # a cross-field check in __post_init__ names its field locally
        raise ParamsError(f"{prefix}{e}") from None


def _convert(tp: Any, value: Any, key: str, rules: Any, complete: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:  # a closed vocabulary: exactly one of its values
        allowed = typing.get_args(tp)
        names = ", ".join(map(str, allowed))
        if isinstance(value, bool) and not isinstance(allowed[0], bool):
            # YAML 1.1 reads a bare off/on/no/yes as a boolean: say so, not just "a string"
            why = "YAML reads a bare off/on/no/yes as a boolean: quote it"
            raise ParamsError(f"{key} = {_show(value)}: expected one of {names} ({why})")
        out = _scalar(type(allowed[0]), value, key)
        if out not in allowed:
            raise ParamsError(f"{key} = {_show(value)}: allowed are {names}")
        return out
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, rules, complete)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.", complete)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            name = getattr(item_tp, "__name__", "str")
            raise ParamsError(f"{key} = {_show(value)}: expected a list of {name}")
        return [_item(item_tp, v, f"{key}[{i}]", rules) for i, v in enumerate(value)]
    return _checked(tp, value, key, rules)


def _item(tp: Any, value: Any, key: str, rules: Any) -> Any:
    """An item of a list field (a scalar, or one of a closed vocabulary)."""
    if typing.get_origin(tp) is typing.Literal:
        return _convert(tp, value, key, rules, True)
    return _checked(tp, value, key, rules)


def _checked(tp: type, value: Any, key: str, rules: Any) -> Any:
    out = _scalar(tp, value, key)
    _check_rules(out, value, key, rules)
    return out


def _scalar(tp: type, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(value, key)
    elif tp is str:
        if isinstance(value, str) and value and "\0" not in value:
            return value
        if isinstance(value, str):
            raise ParamsError(f"{key} = {_show(value)}: must be a non-empty string without NUL")
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    raise ParamsError(f"{key} = {_show(value)}: expected {names.get(tp, tp.__name__)}")


def _finite(value: int | float, key: str) -> float:
    try:
        out = float(value)
    except OverflowError:  # an int beyond float's range
        out = math.inf
    if not math.isfinite(out):
        raise ParamsError(f"{key} = {_show(value)}: must be a finite number")
    return out


def _check_rules(value: Any, written: Any, key: str, rules: Any) -> None:
    """Check ``value`` against ge/gt/le/lt/choices; messages quote the value as ``written``."""
    if "choices" in rules and value not in rules["choices"]:
        raise ParamsError(f"{key} = {_show(written)}: allowed are {', '.join(rules['choices'])}")
    for rule, op, ok in (
        ("ge", ">=", lambda b: value >= b),
        ("gt", ">", lambda b: value > b),
        ("le", "<=", lambda b: value <= b),
        ("lt", "<", lambda b: value < b),
    ):
        if rule in rules and not ok(rules[rule]):
            raise ParamsError(f"{key} = {_show(written)}: must be {op} {rules[rule]}")


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python prints
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= 40 else text[:37] + "..."


def _key(key: Any) -> str:
    """A key as written in messages: plain if it is a short printable string."""
    ok = isinstance(key, str) and key.isprintable() and 0 < len(key) <= 40
    return key if ok else _show(key)


def _first_line(error: Any) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
