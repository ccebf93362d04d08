"""Does a registry writer schema mean what v1 means? One check per schema id (the decoder caches it).

Avro schema resolution (fastavro's, and the spec's) happily reads a writer whose ``end_time`` is
``timestamp-micros`` into v1's ``timestamp-millis`` field: the binary encoding is the same ``long``,
so the microseconds would reach the ERP as if they were milliseconds. This module compares a writer
schema with v1 field by field and names every difference of meaning:

* a v1 field whose type differs in the writer (a primitive type, a logical type, a record, enum or
  fixed of another name, a union with other branches, an array or map of something else);
* a v1 field the writer lacks and v1 has no default for (resolution would fail on every record);
* an enum symbol the writer adds to an enum other than ``status`` (``variables.type``: v1 has no
  default symbol to fall back on).

What is *not* a difference: fields the writer adds (new optional fields are welcome: the v1 reader
skips them), v1 fields with a default that the writer dropped, and new ``status`` symbols (the
decoder reports the writer's symbol and applies ``ERP_SYNC_UNKNOWN_STATUS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = ("record", "error", "enum", "fixed")

STATUS_FIELD = "status"
"""The one field whose enum may gain symbols (handled by the unknown-status policy)."""


class _Names:
    """The named types (records, enums, fixed) one schema defines, by full and by short name."""

    def __init__(self, schema: Any) -> None:
        self.types: dict[str, tuple[Mapping[str, Any], str]] = {}
        self._collect(schema, "")

    def _collect(self, node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch, namespace)
            return
        if not isinstance(node, Mapping):
            return
        kind = node.get("type")
        if kind in _NAMED and isinstance(node.get("name"), str):
            full, ns = _full_name(node, namespace)
            self.types.setdefault(full, (node, ns))
            self.types.setdefault(full.rsplit(".", 1)[-1], (node, ns))
            namespace = ns
            for field in node.get("fields") or ():
                if isinstance(field, Mapping):
                    self._collect(field.get("type"), namespace)
        elif kind in ("array", "map"):
            self._collect(node.get("items" if kind == "array" else "values"), namespace)
        elif isinstance(kind, list | Mapping):
            self._collect(kind, namespace)

    def resolve(self, node: Any, namespace: str) -> tuple[Any, str]:
        """``node`` with a reference to a named type replaced by its definition, and its namespace."""
        if isinstance(node, str) and node not in _PRIMITIVES:
            for key in (f"{namespace}.{node}" if namespace and "." not in node else node, node):
                if key in self.types:
                    return self.types[key]
            raise KeyError(node)
        if isinstance(node, Mapping):
            kind = node.get("type")
            if isinstance(kind, list | Mapping):  # {"type": {...}}: a wrapped schema
                return self.resolve(kind, namespace)
            if isinstance(kind, str) and kind not in _PRIMITIVES and kind not in ("array", "map", *_NAMED):
                return self.resolve(kind, namespace)  # {"type": "UserInfo"}: a wrapped reference
        return node, namespace


def _full_name(node: Mapping[str, Any], namespace: str) -> tuple[str, str]:
    name = str(node["name"])
    if "." in name:
        return name, name.rsplit(".", 1)[0]
    ns = node.get("namespace", namespace) or ""
    return (f"{ns}.{name}" if ns else name), ns


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, str):
        return node
    kind = node.get("type")
    return kind if isinstance(kind, str) else "?"


def describe(node: Any) -> str:
    """A short text of a (resolved) schema node, e.g. ``long (timestamp-micros)`` or ``record UserInfo``."""
    if isinstance(node, list):
        return "union [" + ", ".join(describe(b) for b in node) + "]"
    if isinstance(node, str):
        return node
    kind = _kind(node)
    if kind in _NAMED:
        return f"{kind} {str(node.get('name', '?')).rsplit('.', 1)[-1]}"
    if kind in ("array", "map"):
        return f"{kind} of {describe(node.get('items' if kind == 'array' else 'values'))}"
    logical = node.get("logicalType")
    return f"{kind} ({logical})" if logical else kind


def _logical(node: Any) -> str | None:
    return node.get("logicalType") if isinstance(node, Mapping) else None


class _Comparison:
    def __init__(self, writer: Any, reader: Any) -> None:
        self.writer_names = _Names(writer)
        self.reader_names = _Names(reader)
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def compare(self, w: Any, wns: str, r: Any, rns: str, path: str) -> None:
        try:
            w, wns = self.writer_names.resolve(w, wns)
        except KeyError as exc:
            self.problems.append(f"{path}: the writer names an undefined type {exc.args[0]!r}")
            return
        r, rns = self.reader_names.resolve(r, rns)
        wk, rk = _kind(w), _kind(r)
        if rk == "union" or wk == "union":
            self._union(w, wns, r, rns, path)
            return
        if wk != rk:
            self._differs(w, r, path)
            return
        if rk in _PRIMITIVES:
            if _logical(w) != _logical(r):
                self._differs(w, r, path)
            return
        if rk in _NAMED:
            w_name = str(w.get("name", "")).rsplit(".", 1)[-1]
            r_name = str(r.get("name", "")).rsplit(".", 1)[-1]
            if w_name != r_name:
                self._differs(w, r, path)
                return
            key = (f"{wns}.{w_name}", path)
            if key in self._seen:  # a recursive type already under comparison
                return
            self._seen.add(key)
        if rk == "enum":
            extra = [s for s in w.get("symbols") or () if s not in (r.get("symbols") or ())]
            if extra and path != STATUS_FIELD:
                self.problems.append(f"{path}: the writer adds the symbols {', '.join(map(str, extra))} to enum "
                                     f"{r.get('name')} (v1 has no default symbol for them)")
        elif rk == "fixed":
            if w.get("size") != r.get("size") or _logical(w) != _logical(r):
                self._differs(w, r, path)
        elif rk in ("record", "error"):
            self._record(w, wns, r, rns, path)
        elif rk == "array":
            self.compare(w.get("items"), wns, r.get("items"), rns, path)
        elif rk == "map":
            self.compare(w.get("values"), wns, r.get("values"), rns, path)
        elif _logical(w) != _logical(r):
            self._differs(w, r, path)

    def _record(self, w: Mapping[str, Any], wns: str, r: Mapping[str, Any], rns: str, path: str) -> None:
        wns = _full_name(w, wns)[1]
        rns = _full_name(r, rns)[1]
        writer_fields = {f.get("name"): f for f in w.get("fields") or () if isinstance(f, Mapping)}
        for field in r.get("fields") or ():
            name = field["name"]
            where = f"{path}.{name}" if path else name
            wf = writer_fields.get(name)
            if wf is None:
                for alias in field.get("aliases") or ():
                    wf = writer_fields.get(alias)
                    if wf is not None:
                        break
            if wf is None:
                if "default" not in field:
                    self.problems.append(f"{where}: missing in the writer schema (v1 has no default for it)")
                continue
            self.compare(wf.get("type"), wns, field["type"], rns, where)

    def _union(self, w: Any, wns: str, r: Any, rns: str, path: str) -> None:
        if not (isinstance(w, list) and isinstance(r, list)) or len(w) != len(r):
            self._differs(w, r, path)
            return
        before = len(self.problems)
        for wb, rb in zip(w, r, strict=True):
            self.compare(wb, wns, rb, rns, path)
        if len(self.problems) != before:
            del self.problems[before:]
            self._differs(w, r, path)

    def _differs(self, w: Any, r: Any, path: str) -> None:
        self.problems.append(f"{path or 'the record'}: {describe(w)} in the writer schema where v1 has {describe(r)}")


def incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Every difference of meaning between a writer schema and the reader's (both in JSON form).

    Args:
        writer: the writer schema as the registry gives it (``json.loads`` of its text).
        reader: the reader schema (v1, logical types included).

    Returns:
        One sentence per difference, each starting with the field's path (``end_time: long
        (timestamp-micros) in the writer schema where v1 has long (timestamp-millis)``); empty when
        the writer means what v1 means.
    """
    comparison = _Comparison(writer, reader)
    comparison.compare(writer, "", reader, "", "")
    return comparison.problems


def writer_status_symbols(writer: Any) -> list[str]:
    """The symbols of the writer's ``status`` enum, in its order (empty when it has none)."""
    names = _Names(writer)
    try:
        top, ns = names.resolve(writer, "")
    except KeyError:
        return []
    if _kind(top) != "record":
        return []
    for field in top.get("fields") or ():
        if isinstance(field, Mapping) and field.get("name") == STATUS_FIELD:
            try:
                node, _ = names.resolve(field.get("type"), _full_name(top, ns)[1])
            except KeyError:
                return []
            if _kind(node) == "enum":
                return [str(s) for s in node.get("symbols") or ()]
    return []
