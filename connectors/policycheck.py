"""``genofed policy check``: validate a node's policy file before the node serves it.

Errors are what :meth:`NodeConfig.load` would refuse (the node would not start); warnings are
settings a steward should look at twice (releases of groups below 5, plain combine, no
differencing defence, ...). Every finding carries the line of the offending key, so an editor
can jump to it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from genofed.engine.errors import ConfigError

from .config import NodeConfig


@dataclass
class Finding:
    level: str  # "error" or "warning"
    line: int | None
    message: str

    def format(self, path: Path | str) -> str:
        where = f"{path}:{self.line}" if self.line else str(path)
        return f"{where}: {self.level}: {self.message}"


def locate(text: str, section: str | None, key: str | None = None, entry: str | int | None = None) -> int | None:
    """The 1-based line of ``key`` in TOML table ``section`` (for an array of tables, the entry with
    ``name = entry`` or the entry-th one); the section header when the key is absent."""
    lines = text.splitlines()
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    blocks: list[tuple[int, int]] = []  # (header line, end) of matching blocks
    for i, line in enumerate(lines, 1):
        m = header.match(line)
        if m:
            if blocks and blocks[-1][1] == len(lines):  # a header ends the block before it
                blocks[-1] = (blocks[-1][0], i - 1)
            current = m.group(2).strip()
            if current == section:
                blocks.append((i, len(lines)))
    if section is None:
        blocks = [(1, next((i - 1 for i, ln in enumerate(lines, 1) if header.match(ln)), len(lines)))]
    if not blocks:
        return None
    if isinstance(entry, int):
        blocks = blocks[entry - 1: entry] or blocks
    elif isinstance(entry, str):
        named = [b for b in blocks if any(re.match(rf"^\s*name\s*=\s*[\"']{re.escape(entry)}[\"']", lines[j - 1])
                                          for j in range(b[0], b[1] + 1))]
        blocks = named or blocks
    found_header = blocks[0][0] if section is not None else None
    if key is not None:
        pat = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for start, end in blocks:
            for j in range(start, end + 1):
                if pat.match(lines[j - 1]):
                    return j
    return found_header


_SECTION = re.compile(r"(\[\[?[\w.]+\]\]?)\s*(?:(?:entry\s+(\d+))|'([^']+)')?:?\s*([a-z_0-9]+)?")


def _line_of_error(text: str, message: str) -> int | None:
    m = re.search(r"invalid TOML: .*\(at line (\d+)", message)
    if m:
        return int(m.group(1))
    m = _SECTION.search(message.split(": ", 1)[1] if ": " in message else message)
    if not m:
        return None
    section = m.group(1).strip("[]")
    entry: str | int | None = int(m.group(2)) if m.group(2) else m.group(3)
    key = m.group(4)
    if key and key.startswith("unknown"):
        key = None
    quoted = re.search(r"unknown \[[\w.]+\] keys \['([^']+)'", message) or re.search(r"unknown keys \['([^']+)'", message)
    if quoted:
        key = quoted.group(1)
    return locate(text, section, key, entry)


def check_policy(path: str | Path) -> list[Finding]:
    """All findings for a node.toml: at most one error (the first the node would refuse), then
    warnings."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        return [Finding("error", None, f"cannot read {p}: {e.strerror}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        return [Finding("error", int(m.group(1)) if m else None, f"invalid TOML: {e}")]
    try:
        cfg = NodeConfig.from_dict(data, base=p.parent, path=p)
    except ConfigError as e:
        msg = str(e)
        return [Finding("error", _line_of_error(text, msg), msg.split(": ", 1)[1] if msg.startswith(str(p)) else msg)]
    out: list[Finding] = []

    def warn(section: str | None, key: str | None, message: str) -> None:
        out.append(Finding("warning", locate(text, section, key), message))

    if cfg.min_count < 5:
        warn("policy", "min_count", f"min_count = {cfg.min_count}: groups of fewer than 5 people are released (the usual floor is 5 or 10)")
    if cfg.allow_plain:
        warn("policy", "allow_plain", "allow_plain = true: coordinators see this node's partial results (development only)")
    if cfg.allow_min_max:
        warn("policy", "allow_min_max", "allow_min_max = true: MIN and MAX release single people's values")
    if not cfg.differencing:
        warn("policy", "differencing", "differencing = false: answers about groups differing by one person are not refused")
    if not cfg.rate_limit_per_minute and not cfg.roles:
        warn("policy", "rate_limit_per_minute", "rate_limit_per_minute = 0: researchers may query without limit")
    if not cfg.store.exists():
        warn("node", "store", f"the store {cfg.store} does not exist yet (ingest before serving)")
    if cfg.backend == "hail":
        from genofed.engine.backends.hail_session import hail_available

        if not hail_available():
            warn("node", "backend", "backend = \"hail\": Hail is not installed in this environment; the node will refuse "
                 "queries until it is (pip install 'genofed[hail]' in an environment of its own, docs/hail-backend.md)")
    if not cfg.tls:
        warn(None, None, "no [tls]: the node serves unencrypted grpc://; use TLS outside a test machine (genofed certs)")
    known = set(_store_tables(cfg))
    for col in [*cfg.hidden_columns, *cfg.quasi_identifiers]:
        if known and col.split(".")[0] not in known:
            warn("policy", "hidden_columns" if col in cfg.hidden_columns else "quasi_identifiers",
                 f"{col}: no table {col.split('.')[0]!r} in the store (tables: {sorted(known)})")
    for role in cfg.roles.values():
        for t in role.tables:
            if t != "*" and known and t.lower() not in known | {"genotypes"}:
                out.append(Finding("warning", locate(text, f"roles.{role.name}", "tables"), f"[roles.{role.name}] names unknown table {t!r}"))
    return out


def _store_tables(cfg: NodeConfig) -> list[str]:
    try:
        from genofed.genomics.store import NodeStore

        if not cfg.store.exists():
            return []
        return ["samples", "variants", "genotypes", *NodeStore(cfg.store).manifest.clinical]
    except Exception:  # noqa: BLE001 - a damaged store is reported by the node, not here
        return []
