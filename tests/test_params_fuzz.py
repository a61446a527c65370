"""Property-based: every malformed parameter file stops a stage cleanly.

Each example mutates the valid presets/quick.yaml in one way (so the test knows what it broke),
runs the download stage through the real command-line entry point, and checks: exit code 2, one
`error: ` line naming the broken key (or the file) and what is allowed, no traceback, and nothing
written or changed on disk.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import os
import re
import string
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmtard.config.params import load_params
from bmtard.config.schema import Params
from bmtard.runtime.cli import run_stage
from stages import download

from conftest import ROOT

QUICK_TEXT = (ROOT / "presets" / "quick.yaml").read_text()
QUICK = yaml.safe_load(QUICK_TEXT)
MIN_EXAMPLES = 200
FILE = ""  # the needle of a whole-file problem: the error names only the file


@dataclasses.dataclass(frozen=True)
class Case:
    """One malformed parameter file and what its error line must say."""

    kind: str
    content: bytes | None  # None: no file (absent), or a directory (kind "directory")
    needle: str  # the dotted key (or other text) the line must contain, after the file's path
    words: tuple[str, ...]  # the line contains at least one: it says what is allowed
    facet: str = ""  # a finer label (the depth of the key, the kind of number) for coverage


# --------------------------------------------------------------------------- the keys


def fields_of(cls: type, prefix: str = ""):
    """(dotted key, type) of every field, sections included, depth first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from fields_of(hints[f.name], f"{prefix}{f.name}.")


KEYS = dict(fields_of(Params))  # dotted key -> type (a dataclass for a section)
SECTIONS = [k for k, tp in KEYS.items() if dataclasses.is_dataclass(tp)]
LEAVES = [k for k, tp in KEYS.items() if not dataclasses.is_dataclass(tp)]
AT_DEPTH = {d: [k for k in KEYS if k.count(".") + 1 == d] for d in (1, 2, 3)}  # run, run.seed, ..


def base(tp: typing.Any) -> typing.Any:
    """The type without its `| None`; a closed vocabulary (``Literal``) as its values' type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    out = args[0] if nullable(tp) else tp
    if typing.get_origin(out) is typing.Literal:
        return type(typing.get_args(out)[0])
    if (
        typing.get_origin(out) is list
        and typing.get_origin(typing.get_args(out)[0]) is typing.Literal
    ):
        return list[type(typing.get_args(typing.get_args(out)[0])[0])]
    return out


def nullable(tp: typing.Any) -> bool:
    return type(None) in typing.get_args(tp)


LISTS = [k for k in LEAVES if typing.get_origin(base(KEYS[k])) is list]
ORDERED_LISTS = [k for k in LISTS if k.endswith(("milestones", "eps_curve"))]


NUMERIC = [k for k in LEAVES if base(KEYS[k]) in (int, float, list[int], list[float])]


def at(raw: dict, dotted: str) -> typing.Any:
    """The value of ``dotted`` in ``raw`` ("": ``raw`` itself)."""
    for k in dotted.split(".") if dotted else []:
        raw = raw[k]
    return raw


def mutated(dotted: str, value: typing.Any = None, delete: bool = False) -> bytes:
    """The preset with ``dotted`` set to ``value`` (or deleted), as a file."""
    raw = copy.deepcopy(QUICK)
    parent_key, _, last = dotted.rpartition(".")
    parent = at(raw, parent_key)
    if delete:
        del parent[last]
    else:
        parent[last] = value
    return dump(raw)


def dump(raw: typing.Any) -> bytes:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode()


# --------------------------------------------------------------------------- the mutations

WORDS = st.text(string.ascii_letters + string.digits + " _-.:/", min_size=1, max_size=12)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
SCALARS = st.one_of(st.integers(-5, 5), WORDS, st.booleans(), st.none())


def wrong_values(tp: typing.Any) -> st.SearchStrategy:
    """Values of the wrong type for a field of type ``tp`` (None only where null is refused)."""
    t = base(tp)
    none = st.nothing() if nullable(tp) else st.none()
    lists = st.lists(SCALARS, max_size=3)
    if dataclasses.is_dataclass(t):
        return st.one_of(st.integers(), WORDS, st.booleans(), st.floats(), lists, none)
    if typing.get_origin(t) is list:
        item = typing.get_args(t)[0]
        bad_items = {
            int: st.one_of(WORDS, st.booleans(), st.floats(0.5, 9.5)),
            float: st.one_of(WORDS, st.booleans(), st.lists(st.integers(0, 9), max_size=2)),
            str: st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False)),
        }[item]
        return st.one_of(st.integers(), WORDS, none, st.lists(bad_items, min_size=1, max_size=3))
    bad = {
        int: st.one_of(WORDS, st.booleans(), st.floats(allow_nan=False), lists),
        float: st.one_of(WORDS, st.booleans(), lists),
        bool: st.one_of(st.integers(), WORDS, st.floats(allow_nan=False), lists),
        str: st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False), lists),
    }[t]
    return st.one_of(bad, none)


@st.composite
def wrong_type(draw) -> Case:
    depth = draw(st.sampled_from(list(AT_DEPTH)))
    key = draw(st.sampled_from(AT_DEPTH[depth]))
    value = draw(wrong_values(KEYS[key]))
    return Case("wrong type", mutated(key, value), key, ("expected",), f"depth {depth}")


@st.composite
def top_not_mapping(draw) -> Case:
    value = draw(st.one_of(st.lists(SCALARS, max_size=4), st.integers(), WORDS, st.floats()))
    return Case("top level not a mapping", dump(value), "top level = ", ("expected a mapping",))


@st.composite
def unknown_key(draw) -> Case:
    prefix = draw(st.sampled_from(["", *SECTIONS]))
    siblings = [k.rsplit(".", 1)[-1] for k in KEYS if k.rpartition(".")[0] == prefix]
    name = draw(st.one_of(NAMES.filter(lambda n: n not in siblings), st.integers(0, 99)))
    raw = copy.deepcopy(QUICK)
    at(raw, prefix)[name] = draw(SCALARS)
    dotted = f"{prefix}.{name}" if prefix else str(name)
    needle = f"{dotted}: unknown key; allowed in"
    return Case(
        "unknown key", dump(raw), needle, ("unknown key",), f"depth {dotted.count('.') + 1}"
    )


@st.composite
def missing_key(draw) -> Case:
    depth = draw(st.sampled_from(list(AT_DEPTH)))
    key = draw(st.sampled_from(AT_DEPTH[depth]))
    if depth == 1:
        needle = f"{key}: missing section; required sections: run, data"
    else:
        needle = f"{key}: missing; every key must be given"
    return Case("missing key", mutated(key, delete=True), needle, ("missing",), f"depth {depth}")


BAD_NUMBERS = {
    "nan": st.just(float("nan")),
    "inf": st.just(float("inf")),
    "-inf": st.just(float("-inf")),
    "negative": st.one_of(st.integers(-(10**6), -1), st.floats(-1e300, -1e-6)),
    "huge": st.one_of(st.integers(10**10, 10**30), st.floats(1e10, 1e300)),
}


@st.composite
def bad_number(draw) -> Case:
    key = draw(st.sampled_from(NUMERIC))
    label = draw(st.sampled_from(list(BAD_NUMBERS)))
    value = draw(BAD_NUMBERS[label])
    words = number_words(KEYS[key], value)
    if key in LISTS:  # one item of the preset's list
        items = list(at(QUICK, key))
        items[draw(st.integers(0, len(items) - 1))] = value
        value = items
    return Case("bad number", mutated(key, value), key, words, label)


def number_words(tp: typing.Any, value: int | float) -> tuple[str, ...]:
    """What the error must say about ``value`` given to a numeric key of type ``tp``."""
    if base(tp) in (int, list[int]) and isinstance(value, float):
        return ("expected an integer",)
    if not math.isfinite(value):
        return ("must be a finite number",)
    return ("must be >",) if value < 0 else ("must be <",)


@st.composite
def list_for_mapping(draw) -> Case:
    key = draw(st.sampled_from(["", *SECTIONS]))
    section = at(QUICK, key)
    as_list = draw(st.sampled_from([list(section), [{k: v} for k, v in section.items()]]))
    if not key:
        return Case("list for mapping", dump(as_list), "top level = [", ("expected a mapping",))
    return Case("list for mapping", mutated(key, as_list), f"{key} = [", ("expected a mapping",))


@st.composite
def mapping_for_value(draw) -> Case:
    key = draw(st.sampled_from(LEAVES))
    value = draw(st.dictionaries(NAMES, SCALARS, max_size=3))
    return Case("mapping for list or scalar", mutated(key, value), f"{key} = {{", ("expected",))


@st.composite
def unordered_list(draw) -> Case:
    key = draw(st.sampled_from(ORDERED_LISTS))
    items = st.integers(1, 500) if key.endswith("milestones") else st.floats(0, 255)
    value = draw(st.lists(items, min_size=2, max_size=6).filter(lambda v: v != sorted(set(v))))
    needle = f"{key} = ["
    return Case("unsorted or repeated list", mutated(key, value), needle, ("strictly increasing",))


def key_lines(text: str) -> list[tuple[int, str]]:
    """(line index, dotted key) of every `key:` line of a block-style YAML text."""
    out, stack = [], []
    for i, line in enumerate(text.splitlines()):
        m = re.match(r"( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if m:
            depth = len(m.group(1)) // 2
            stack[depth:] = [m.group(2)]
            out.append((i, ".".join(stack)))
    return out


KEY_LINES = key_lines(QUICK_TEXT)


@st.composite
def duplicate_key(draw) -> Case:
    i, dotted = draw(st.sampled_from(KEY_LINES))
    lines = QUICK_TEXT.splitlines(keepends=True)
    copy_line = lines[i]
    if draw(st.booleans()) and dotted in LEAVES:  # a leaf's second value may differ
        copy_line = re.sub(r":.*", ": 1", copy_line)
    text = "".join([*lines[: i + 1], copy_line, *lines[i + 1 :]])
    parent, _, name = dotted.rpartition(".")
    place = f"in {parent}" if parent else "at the top level"
    needle = f"line {i + 2}: duplicate key '{name}' {place}; each key may be given once"
    return Case("duplicate key", text.encode(), needle, ("duplicate",))


EMPTY_LINES = st.sampled_from(["", "   ", "# a comment", "#", "  # indented comment"])


@st.composite
def empty_file(draw) -> Case:
    lines = draw(st.lists(EMPTY_LINES, max_size=5))
    start = draw(st.sampled_from(["", "---\n", "--- # start\n"]))  # no document, or an empty one
    text = start + "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    return Case("empty", text.encode(), "empty; required sections: run, data", ("empty",))


BREAKERS = [
    "`backtick",
    "@at sign",
    "\tkey: 1",
    "key: value: other",
    "{",
    "[",
    "]",
    "}",
    "%percent",
    "*undefined",
    "key: 'x",
    'key: "x',
    "? ? ?",
    "- item",
    "!!int x: 1",
]


@st.composite
def not_yaml(draw) -> Case:
    lines = QUICK_TEXT.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines)))
    text = "".join([*lines[:at], draw(st.sampled_from(BREAKERS)) + "\n", *lines[at:]])
    return Case("not YAML", text.encode(), "not valid YAML (", ("not valid YAML",))


NOT_UTF8 = st.one_of(
    st.sampled_from([b"\xff", b"\xfe\xff", b"\x80", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"]),
    st.sampled_from([b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]),
    st.text("\u00e9\u00fc\u00df\u00f1\u00b0", min_size=1, max_size=4).map(
        lambda t: t.encode("latin-1")
    ),
)


@st.composite
def not_utf8(draw) -> Case:
    data = QUICK_TEXT.encode()
    at = draw(st.integers(0, len(data)))
    content = data[:at] + draw(NOT_UTF8) + data[at:]
    return Case("not UTF-8", content, "not UTF-8 (byte 0x", ("not UTF-8",))


WHOLE_FILE_WORDS = (
    "not valid YAML",
    "not UTF-8",
    "empty",
    "expected a mapping",
    "unknown key",
    "duplicate",
)


@st.composite
def binary_garbage(draw) -> Case:
    return Case("binary garbage", draw(st.binary(min_size=1, max_size=200)), FILE, WHOLE_FILE_WORDS)


@st.composite
def not_a_file(draw) -> Case:
    if draw(st.booleans()):
        return Case("directory", None, "is a directory", ("expected a YAML parameter file",))
    return Case("absent", None, "parameter file not found", ("not found",))


# each kind of mutation with its number of examples (a kind with few possible files stops sooner)
STRATEGIES = [
    (wrong_type(), 40),
    (top_not_mapping(), 15),
    (unknown_key(), 40),
    (missing_key(), 40),
    (bad_number(), 50),
    (list_for_mapping(), 15),
    (mapping_for_value(), 15),
    (unordered_list(), 15),
    (duplicate_key(), 25),
    (empty_file(), 10),
    (not_yaml(), 15),
    (not_utf8(), 15),
    (binary_garbage(), 15),
    (not_a_file(), 2),
]
KINDS = {
    "top level not a mapping",
    "list for mapping",
    "mapping for list or scalar",
    "unsorted or repeated list",
    "duplicate key",
    "empty",
    "not YAML",
    "not UTF-8",
    "binary garbage",
    "directory",
    "absent",
}
DEPTHS = [f"depth {d}" for d in AT_DEPTH]
FACETS = (
    KINDS
    | {f"{kind}: {d}" for kind in ("wrong type", "unknown key", "missing key") for d in DEPTHS}
    | {f"bad number: {label}" for label in BAD_NUMBERS}
)


# --------------------------------------------------------------------------- running a stage


def place(case: Case, path: Path) -> None:
    """Put the case's parameter file (or directory, or nothing) at ``path``."""
    if case.kind == "directory":
        path.mkdir()
        (path / "run.yaml").write_text("seed: 0\n")
    elif case.content is not None:
        path.write_bytes(case.content)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder``: its bytes (files) and modification time."""
    out = {".": (None, folder.stat().st_mtime_ns)}
    for p in sorted(folder.rglob("*")):
        data = p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(folder))] = (data, p.stat().st_mtime_ns)
    return out


def run_in_process(params: Path, out: Path) -> tuple[int, str]:
    """The download stage as its script runs it: (exit code, stderr)."""
    argv = ["--params", str(params), "--out", str(out)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        run_stage(download.__doc__, download.add_arguments, download.main, argv=argv)
    return stop.value.code, err.getvalue()


def check_error(code: int, stderr: str, case: Case, path: Path) -> None:
    assert code == 2, (case, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, (case, stderr)
    line = lines[0]
    assert line.startswith(f"error: {path}: "), (case, line)
    assert case.needle in line, (case, line)
    assert any(w in line for w in case.words), (case, line)


def check_case(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "params.yaml"
        place(case, path)
        before = snapshot(folder)
        code, stderr = run_in_process(path, folder / "data")
        check_error(code, stderr, case, path)
        assert snapshot(folder) == before, case


def test_every_malformed_params_file_fails_cleanly():
    """At least MIN_EXAMPLES files, every kind of mutation and every depth of key among them."""
    seen: list[str] = []
    for strategy, examples in STRATEGIES:
        run_examples(strategy, examples, seen)
    assert len(seen) >= MIN_EXAMPLES, len(seen)
    assert set(seen) == FACETS, FACETS - set(seen)


def run_examples(strategy: st.SearchStrategy, examples: int, seen: list[str]) -> None:
    """Up to ``examples`` files from ``strategy`` through check_case, each noted in ``seen``."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(strategy)
    def check(case: Case) -> None:
        seen.append(f"{case.kind}: {case.facet}" if case.facet else case.kind)
        check_case(case)

    check()


def test_the_mutations_start_from_a_valid_file():
    """Each case breaks only what it names: the preset itself passes, every key on its line."""
    load_params(ROOT / "presets" / "quick.yaml")
    assert len(KEY_LINES) == len(KEYS)  # every key of the preset is found on its line
    assert {k for _, k in KEY_LINES} == set(KEYS)


# --------------------------------------------------------------------------- a real process

REAL = [
    Case("missing key", mutated("distill.optim.lr", delete=True), "distill.optim.lr", ("missing",)),
    Case("bad number", mutated("evaluate.eps", math.nan), "evaluate.eps = nan", ("finite",)),
    Case(
        "duplicate key",
        QUICK_TEXT.replace("run:", "run:\n  seed: 1", 1).encode(),
        "duplicate key 'seed' in run",
        ("duplicate",),
    ),
    Case("not UTF-8", QUICK_TEXT.encode() + b"\xff", "not UTF-8", ("expected a UTF-8",)),
    Case("empty", b"# nothing\n", "empty", ("required sections: run",)),
]


def test_real_stage_processes_exit_2_and_write_nothing(tmp_path: Path):
    """The same through `python -m stages.download` (started together: each imports torch)."""
    runs = []
    for i, case in enumerate(REAL):
        folder = tmp_path / str(i)
        folder.mkdir()
        place(case, folder / "params.yaml")
        before = snapshot(folder)
        command = ["-m", "stages.download", "--params", str(folder / "params.yaml")]
        proc = subprocess.Popen(
            [sys.executable, *command, "--out", "data"],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs.append((case, folder, before, proc))
    for case, folder, before, proc in runs:
        _, stderr = proc.communicate(timeout=300)
        check_error(proc.returncode, stderr, case, folder / "params.yaml")
        assert snapshot(folder) == before, case
        assert not (folder / "data").exists()
