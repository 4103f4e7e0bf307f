"""Named queries: the documented ``.sql`` files in ``queries/``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import sqlglot
from sqlglot import exp

from genofed.engine.errors import PlanningError
from genofed.engine.sqlcheck import DIALECT

_PARAM = re.compile(r"^(\w+)\s+(\w+)\s*=\s*(.+?)\s*(?:--\s*(.*))?$")


@dataclass
class Param:
    name: str
    type: str
    default: Any
    doc: str = ""


@dataclass
class NamedQuery:
    name: str
    title: str
    description: str
    sql: str
    params: list[Param] = field(default_factory=list)

    def render(self, **values: Any) -> str:
        """The SQL with parameters substituted as literals (through sqlglot, never string formatting)."""
        known = {p.name: p for p in self.params}
        unknown = set(values) - set(known)
        if unknown:
            raise PlanningError(f"query {self.name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(known)}")
        args = {}
        for p in self.params:
            v = values.get(p.name, p.default)
            if p.type.upper() in ("BIGINT", "INTEGER", "INT"):
                v = int(v)
            elif p.type.upper() in ("DOUBLE", "FLOAT"):
                v = float(v)
            else:
                v = str(v)
            args[p.name] = v
        tree = sqlglot.parse_one(self.sql, dialect=DIALECT)
        return exp.replace_placeholders(tree, **args).sql(DIALECT)


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_named(text: str, fallback_name: str = "") -> NamedQuery:
    meta: dict[str, str] = {}
    params: list[Param] = []
    body: list[str] = []
    last = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("--") and not body:
            content = s[2:].strip()
            m = re.match(r"^(\w+):\s*(.*)$", content)
            if m:
                key, val = m.group(1).lower(), m.group(2)
                if key == "param":
                    pm = _PARAM.match(val)
                    if pm:
                        params.append(Param(pm.group(1), pm.group(2), _literal(pm.group(3)), pm.group(4) or ""))
                    last = None
                else:
                    meta[key] = val
                    last = key
            elif last:
                meta[last] += " " + content
            continue
        body.append(line)
    return NamedQuery(meta.get("name", fallback_name), meta.get("title", ""), meta.get("description", ""), "\n".join(body).strip(), params)


def list_queries() -> dict[str, NamedQuery]:
    """All named queries shipped with genofed."""
    out = {}
    for f in sorted(resources.files("genofed.queries").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".sql"):
            q = parse_named(f.read_text(), f.name[:-4])
            out[q.name] = q
    return out


def get_query(name: str) -> NamedQuery:
    qs = list_queries()
    if name not in qs:
        raise PlanningError(f"no named query {name!r}; available: {', '.join(sorted(qs)) or '(none)'}")
    return qs[name]
