"""Declarative checks of the fields read from JSON files and of user text.

Each reader (``config.json``, the safetensors index, ``preprocessor_config.json``,
``tokenizer_config.json``, ``manifest.json``) describes what it reads as a table of
:class:`Field` rows (name, kind, range) and calls :func:`check_fields`. A bad value raises the
reader's error class with one line ``<file>: <field> <problem>, got <value>``, so a user sees which
file and which field to fix. Imports nothing heavy (the runtime uses it).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, NoReturn

from prunevid.errors import ModelDirError, PruneVidError

KINDS = ("int", "float", "bool", "str", "object", "list", "path", "name", "sha256")
_KIND_WORDS = {
    "int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
    "object": "a JSON object", "list": "a JSON list", "path": "a relative path inside the folder",
    "name": "a file name inside the folder", "sha256": "a sha256 (64 hex digits)",
}
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Field:
    """One field of a JSON object.

    ``kind``: int, float (finite), bool, str (valid text), object, list, path (relative, no ``..``),
    name (a plain file name) or sha256. ``lo``/``hi`` bound numbers (inclusive; ``lo_open`` makes
    ``lo`` exclusive). ``choices`` restricts the value. ``length`` and ``item`` describe a list's
    size and each element (``item.name`` is ignored). ``required`` fields must be present;
    ``nullable`` ones may be JSON null, which means "absent".
    """

    name: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple = ()
    length: int | None = None
    item: Field | None = None
    required: bool = False
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")


def shown(value: Any, limit: int = 40) -> str:
    """``value`` as short one-line JSON (how it appears in the file), for error messages."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(error: type[PruneVidError], file: str, field: str, problem: str) -> NoReturn:
    """Raise ``error("<file>: <field> <problem>")``."""
    raise error(f"{file}: {field} {problem}")


def text_problem(text: str, allowed_controls: str = "\n\t") -> str | None:
    """Why ``text`` is not valid text, as a predicate ("is not valid UTF-8 text: ..."): a lone
    surrogate (what Python makes of a non-UTF-8 byte on the command line) or a control character
    not in ``allowed_controls``. None when it is valid."""
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category == "Cs":
            byte = ord(ch) - 0xDC00 if 0xDC80 <= ord(ch) <= 0xDCFF else None
            what = f"the byte 0x{byte:02x}" if byte is not None else f"a lone surrogate U+{ord(ch):04X}"
            return f"is not valid UTF-8 text: it contains {what} at character {i}"
        if category == "Cc" and ch not in allowed_controls:
            return f"is not valid text: it contains the control character U+{ord(ch):04X} at character {i}"
    return None


def _bound(value: float) -> str:
    """A range bound as written: integers in full (4194304, not 4.1943e+06)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_words(f: Field) -> str:
    if f.lo is not None and f.hi is not None:
        return f" in {'(' if f.lo_open else '['}{_bound(f.lo)}, {_bound(f.hi)}]"
    if f.lo is not None:
        return f" {'>' if f.lo_open else '>='} {_bound(f.lo)}"
    if f.hi is not None:
        return f" <= {_bound(f.hi)}"
    return ""


def _kind_ok(f: Field, value: Any) -> bool:
    if f.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if f.kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if f.kind == "bool":
        return isinstance(value, bool)
    if f.kind == "object":
        return isinstance(value, dict)
    if f.kind == "list":
        return isinstance(value, list)
    return isinstance(value, str)  # str, path, name, sha256


def _path_problem(kind: str, value: str) -> str | None:
    if kind == "sha256":
        return None if len(value) == 64 and set(value) <= _HEX else "must be a sha256 (64 lowercase hex digits)"
    if not value or "\\" in value or "\x00" in value:
        return f"must be {_KIND_WORDS[kind]}"
    parts = PurePosixPath(value).parts
    if kind == "name" and (len(parts) != 1 or value in (".", "..")):
        return "must be a file name inside the folder (no folders, no '..')"
    if value.startswith("/") or ".." in parts or "." in value.split("/"):
        return "must be a relative path inside the folder (no absolute path, no '..')"
    return None


def check_value(f: Field, value: Any, file: str, error: type[PruneVidError], label: str) -> Any:
    """Check one value against ``f``; ``label`` is its dotted name in messages. Returns it."""
    if not _kind_ok(f, value):
        fail(error, file, label, f"must be {_KIND_WORDS[f.kind]}{_range_words(f) if f.kind in ('int', 'float') else ''}, got {shown(value)}")
    if f.kind in ("int", "float"):
        low = f.lo is not None and (value <= f.lo if f.lo_open else value < f.lo)
        if low or (f.hi is not None and value > f.hi):
            fail(error, file, label, f"must be{_range_words(f)}, got {shown(value)}")
    if isinstance(value, str):
        problem = text_problem(value, "") or (_path_problem(f.kind, value) if f.kind in ("path", "name", "sha256") else None)
        if problem:
            fail(error, file, label, f"{problem}, got {shown(value)}")
    if f.choices and value not in f.choices:
        fail(error, file, label, f"must be one of {', '.join(shown(c) for c in f.choices)}, got {shown(value)}")
    if f.kind == "list":
        if f.length is not None and len(value) != f.length:
            fail(error, file, label, f"must have {f.length} entries, got {shown(value)}")
        if f.item is not None:
            for i, element in enumerate(value):
                check_value(f.item, element, file, error, f"{label}[{i}]")
    return value


def check_fields(data: Any, table: Sequence[Field], file: str, error: type[PruneVidError],
                 prefix: str = "") -> dict[str, Any]:
    """Check the fields of ``data`` listed in ``table``; returns ``{name: value}`` of those present
    (JSON null counts as absent for ``nullable`` fields). ``prefix`` is the dotted path of ``data``
    in the file ("" at top level). Keys the table does not list are left alone."""
    where = prefix.rstrip(".") or "the file"
    if not isinstance(data, dict):
        fail(error, file, where, f"must be a JSON object, got {shown(data)}")
    out: dict[str, Any] = {}
    for f in table:
        if f.name not in data or (data[f.name] is None and f.nullable):
            if f.required:
                fail(error, file, prefix + f.name, "is missing")
            continue
        out[f.name] = check_value(f, data[f.name], file, error, prefix + f.name)
    return out


def check_map(data: Any, key: Field, value: Field, file: str, error: type[PruneVidError], label: str,
              non_empty: bool = False) -> dict[str, Any]:
    """Check a JSON object used as a map: every key against ``key`` and every value against
    ``value`` (e.g. file name -> sha256). Returns ``data``."""
    if not isinstance(data, dict):
        fail(error, file, label, f"must be a JSON object, got {shown(data)}")
    if non_empty and not data:
        fail(error, file, label, "must not be empty")
    for k, v in data.items():
        check_value(key, k, file, error, f"{label} key")
        check_value(value, v, file, error, f"{label}[{shown(k)}]")
    return data


_ANNOTATION_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "str", "Mode": "str"}


def dataclass_fields(cls: type, bounds: dict[str, tuple[float, float]], default_bounds: tuple[float, float]) -> tuple[Field, ...]:
    """A field table built from a dataclass, so it follows the dataclass when fields are added:
    one row per field whose annotation is int, float, bool or str (an enum of strings counts as
    str); numbers bounded by ``bounds[name]`` or ``default_bounds``; fields without a default are
    required."""
    from dataclasses import MISSING, fields

    table = []
    for f in fields(cls):
        kind = _ANNOTATION_KINDS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if kind is None:
            continue
        lo, hi = bounds.get(f.name, default_bounds) if kind in ("int", "float") else (None, None)
        required = f.default is MISSING and f.default_factory is MISSING
        table.append(Field(f.name, kind, lo, hi, required=required))
    return tuple(table)


_TOKEN_CONTENT = (Field("content", "str", required=True),)
TOKENIZER_CONFIG_FIELDS: tuple[Field, ...] = (Field("add_bos_token", "bool"), Field("add_eos_token", "bool"))
SPECIAL_TOKENS = ("bos_token", "eos_token")


def check_tokenizer_config(data: dict[str, Any], file: str) -> dict[str, Any]:
    """Check the fields prunevid reads from ``tokenizer_config.json``: the flags of
    :data:`TOKENIZER_CONFIG_FIELDS` and the special tokens, each a string or ``{"content": str}``
    (null means absent). Raises :class:`ModelDirError`; returns ``data``."""
    check_fields(data, TOKENIZER_CONFIG_FIELDS, file, ModelDirError)
    for key in SPECIAL_TOKENS:
        value = data.get(key)
        if isinstance(value, dict):
            check_fields(value, _TOKEN_CONTENT, file, ModelDirError, key + ".")
        elif value is not None:
            check_value(Field(key, "str"), value, file, ModelDirError, key)
    return data
