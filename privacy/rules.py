"""The node's disclosure rules, written once for every combine mode (DESIGN.md, "Disclosure model").

Two steps of the node pipeline call this module:

* :func:`check_request` before execution: rule 1 (identifiers are join keys only) for SQL
  fragments, rules 1 and 6 (declared variables) for analyses;
* :func:`release` after execution: rule 2 (minimum count on the people who influence each value,
  dominance of sums), the node's own minimum count and k-anonymity of quasi-identifier groups,
  and rule 3 (nothing about a withheld cell leaves: its key is blinded or dropped), producing the
  one table that may leave the node in the request's combine mode.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genofed.engine.errors import DisclosureError
from genofed.engine.protocol import BLINDED_KEY_COLUMN, N_COLUMN, SUPPRESSED_COLUMN

from . import influence as I
from .identifiers import check_expression, check_identifiers

RULE_MIN_COUNT = "min_count"
RULE_K_ANONYMITY = "k_anonymity"
RULE_DECLARED = "declared_variable"
RULE_PHENOTYPE_CLASSES = "phenotype_classes"
RULE_MIN_MAC = "min_minor_allele"  # rule 5: a per-variant cell with 0..k-1 carriers of an allele, or below the minimum MAC


@dataclass
class Released:
    """What :func:`release` lets leave: the table, and how many groups each rule withheld."""

    table: pa.Table
    withheld: dict[str, int] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)  # plain: blinded keys of the withheld groups

    @property
    def n_withheld(self) -> int:
        return int(sum(self.withheld.values()))


# -- before execution ------------------------------------------------------------------------------

def check_request(frag: Any, policy: Any) -> None:
    """Rules that depend on the request alone (raise :class:`DisclosureError`)."""
    if hasattr(frag, "select"):
        check_identifiers(frag.select, policy.identifiers)
        return
    args = getattr(frag, "args", None) or {}
    from genofed.engine.analysis import parse_expression

    for what, key in (("phenotype", "phenotype"), ("samples filter", "samples"), ("variants filter", "variants")):
        text = args.get(key)
        if isinstance(text, str) and text:
            check_expression(parse_expression(text, what), what, policy.identifiers)
    covs = args.get("covariates") or []
    for text in covs if isinstance(covs, list) else []:
        if isinstance(text, str):
            check_expression(parse_expression(text, "covariate"), "covariate", policy.identifiers)
    for what, texts in (("phenotype", [args.get("phenotype")]), ("covariate", covs if isinstance(covs, list) else [])):
        for text in texts:
            if isinstance(text, str) and not _is_column(parse_expression(text, what)):
                raise DisclosureError(
                    f"the {what} of an analysis must be a declared variable (a column such as 'phenotypes.ldl'), "
                    "not an expression: expressions can single people out; derive the variable at ingest instead",
                    rule=RULE_DECLARED)


def _is_column(e: Any) -> bool:
    from sqlglot import exp

    return isinstance(e, exp.Column)


def check_phenotype(y: np.ndarray | None, min_count: int) -> None:
    """Rule 6: each class of a binary phenotype, and the non-zero part of a continuous one, has at
    least ``min_count`` people at this node (decided on counts of people, never on the values)."""
    if y is None or min_count <= 1:
        return
    y = y[np.isfinite(y)]
    if not len(y):
        return
    values, counts = np.unique(y, return_counts=True)
    # one value: the other class is empty (fewer than min_count too). Answering it would tell
    # "status = 1 OR <one person>" for a case (one class) from a control (a class of one).
    if len(values) == 1 or (len(values) == 2 and counts.min() < min_count):
        raise DisclosureError(
            f"the phenotype has a class with fewer than {min_count} people at this node; a binary phenotype needs "
            f"at least {min_count} people in each class", rule=RULE_PHENOTYPE_CLASSES)
    nonzero = int(np.count_nonzero(y))
    if 0 < nonzero < min_count:
        raise DisclosureError(
            f"the phenotype is non-zero for fewer than {min_count} people at this node; it would single them out",
            rule=RULE_PHENOTYPE_CLASSES)


# -- after execution -------------------------------------------------------------------------------

def release(frag: Any, table: pa.Table, mode: str, policy: Any, *, quasi_identified: bool, query_id: str,
            influence: pa.Table | None = None, fragment_sql: str = "") -> Released:
    """The table that may leave this node for ``frag`` in combine ``mode``.

    plain: groups below the minimum count, or whose values a few people drive (influence) or one
    person dominates, are withheld here and do not leave, keys included. A global aggregate's one
    row leaves with its values NULL and ``_suppressed`` set. For grouped results the node returns
    the blinded keys of its withheld groups (:func:`blind_keys`, an HMAC under the nodes' shared
    ``key_secret``, the query id and the fragment), and each released row carries its own blinded key
    (column ``_bk``): the coordinator withholds federation-wide every released group whose blinded
    key another node withheld, without learning which keys they are (one round, no second call).

    mpc/he: the minimum count is tested federation-wide on the secret sums, on the group's count
    and on every influence count (``_ni<j>`` lanes). A node cannot withhold one group of a secure
    sum alone, so a group one person dominates at this node refuses the release (a conservative
    local test: the federation-wide total is at least this node's); quasi-identifier groups below
    the minimum count are dropped here, keys included.
    """
    k = policy.min_count
    partials = list(frag.partials) if hasattr(frag, "partials") else []
    keys = list(getattr(frag, "keys", []))
    withheld: dict[str, int] = {}
    influence_names: dict[str, int] = {}  # partial -> number of branch counts, decided from the SQL alone
    if hasattr(frag, "select") and getattr(frag, "sample_id", None) is not None:
        from genofed.engine.backends.duckdb import branch_conditions, influence_partials

        influence_names = {name: len(branch_conditions(body)) for name, body in influence_partials(frag).items()}
    if influence is not None:
        table = I.attach(table, influence, keys)
    secure = mode != "plain"
    guards = guard_columns(table)
    min_mac = minor_allele_minimum(policy)
    verdict = I.judge(table, partials, k, policy.dominance, local_n=not secure) if influence is not None else None
    if secure:
        if verdict is not None and verdict.dominance.any():
            raise DisclosureError(
                f"a released sum would be dominated by one person (more than {policy.dominance:.0%} of its total) at this "
                "node; sum over larger or less skewed groups, or ask with an epsilon", rule=I.RULE_DOMINANCE)
        # the influence counts travel as secret count lanes: the minimum count is tested on their
        # federation-wide sums, like the group's own count (privacy/secure/layout.py)
        table = I.strip(table, partials, keep_counts=True)
        for name, n_branches in influence_names.items():
            for ni in [I.influence_columns(name)[0], *(f"{I.influence_columns(name)[0]}_{m + 1}" for m in range(n_branches))]:
                if ni not in table.column_names:  # not computed here (min_count 1): the group's people
                    table = table.append_column(ni, pc.cast(pc.fill_null(table.column(N_COLUMN), 0), pa.int64()))
        if quasi_identified and keys:
            table, dropped = _drop_small(table, k)
            if dropped:
                withheld[RULE_K_ANONYMITY] = dropped
        if guards:  # rule 5: the guard counts travel as count lanes, tested federation-wide; the node announces its minimum MAC
            from .secure.layout import META_MIN_MAC

            table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_MIN_MAC: str(min_mac).encode()})
        return Released(table, withheld)

    # a global aggregate over nobody is released as 0 (withholding it at one node would withhold
    # every plain query that some node has no one for); the "0 released, 1 withheld" question
    # about one person this leaves open is in docs/privacy-attacks.md
    small = _small(table, k, keys)
    masks = {RULE_MIN_COUNT: small}
    if verdict is not None:
        masks[I.RULE_INFLUENCE] = verdict.influence & ~small
        masks[I.RULE_DOMINANCE] = verdict.dominance & ~small & ~verdict.influence
    if quasi_identified:
        masks[RULE_K_ANONYMITY] = _small(table, k, keys, zero_ok=bool(keys)) & ~small
    if guards:
        masks[RULE_MIN_MAC] = guard_small(table, k, min_mac) & ~small
        table = table.drop_columns(guards)  # a node's own carrier counts never leave it
    table = I.strip(table, partials)
    drop = np.zeros(table.num_rows, bool)
    for rule, m in masks.items():
        if m.any():
            withheld[rule] = int(m.sum())
            drop |= m
    if not keys:
        return Released(_null_out(table, drop, partials, keys), withheld)
    if not policy.key_secret:
        return Released(_null_out(table, drop, partials, keys).filter(pa.array(~drop)), withheld)
    context = query_id + "\x1f" + hashlib.sha256(fragment_sql.encode()).hexdigest()  # a reused query id gets other tokens
    blinded = blind_keys(table, keys, policy.key_secret, context)
    out = _null_out(table, drop, partials, keys).append_column(BLINDED_KEY_COLUMN, blinded).filter(pa.array(~drop))
    return Released(out, withheld, blinded.filter(pa.array(drop)).to_pylist())


def minor_allele_minimum(policy: Any) -> int:
    """The node's minimum minor-allele count (``[policy] min_mac``; default its minimum count)."""
    mac = getattr(policy, "min_mac", None)
    return int(policy.min_count if mac is None else mac)


def guard_columns(table: pa.Table) -> list[str]:
    """The rule-5 guard columns of a per-variant analysis table (:func:`genofed.genomics.analyses.rule5_guards`):
    ``_ng<j>`` the people carrying an allele in one released cell, ``_nm<j>`` allele counts."""
    from .secure.layout import GUARD_PREFIX, MAC_PREFIX

    return [c for c in table.column_names if c.startswith((GUARD_PREFIX, MAC_PREFIX))]


def guard_small(table: pa.Table, min_count: int, min_mac: int) -> np.ndarray:
    """Rule 5 on this node's own cells (plain mode): a row is withheld when some cell has fewer
    than ``min_count`` carriers of either allele, 0 included (0 cases among a variant's carriers
    tells every carrier is a control, as much as 1 tells who the case is), or an allele count is
    below ``min_mac``. The same test the secure modes run on federation-wide sums
    (:func:`genofed.privacy.secure.layout.lane_small`)."""
    from .secure.layout import Lane, lane_small

    out = np.zeros(table.num_rows, bool)
    for c in guard_columns(table):
        v = pc.fill_null(table.column(c), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        out |= lane_small(Lane(c, "n", "int"), v, min_count, min_mac, last=False)
    return out


def _small(table: pa.Table, k: int, keys: list[str], zero_ok: bool = True) -> np.ndarray:
    """Groups of 1..k-1 people (``zero_ok=False``: 0..k-1, a global aggregate keyed on
    quasi-identifiers, where a zero would tell that nobody has those values)."""
    from .disclosure import below

    n = pc.fill_null(table.column(N_COLUMN), 0).to_numpy(zero_copy_only=False).astype(np.int64) if table.num_rows \
        else np.zeros(0, np.int64)
    return below(n, k, zero_small=not zero_ok)


def _drop_small(table: pa.Table, k: int) -> tuple[pa.Table, int]:
    small = _small(table, k, ["_"])
    return table.filter(pa.array(~small)), int(small.sum())


def _null_out(table: pa.Table, drop: np.ndarray, partials: list[str], keys: list[str]) -> pa.Table:
    """Withheld rows: partials, ``_n`` and keys NULL, ``_suppressed`` true."""
    flag = pa.array(drop)
    if SUPPRESSED_COLUMN in table.column_names:
        old = pc.fill_null(table.column(SUPPRESSED_COLUMN), False)
        table = table.set_column(table.column_names.index(SUPPRESSED_COLUMN), SUPPRESSED_COLUMN, pc.or_(old, flag))
    else:
        table = table.append_column(SUPPRESSED_COLUMN, flag)
    if not drop.any():
        return table
    keep = pa.array(~drop)
    for name in [*partials, N_COLUMN, *keys]:
        if name in table.column_names:
            i = table.column_names.index(name)
            col = table.column(name)
            table = table.set_column(i, name, pc.if_else(keep, col, pa.scalar(None, col.type)))
    return table


def blind_keys(table: pa.Table, keys: list[str], secret: str, query_id: str) -> pa.Array:
    """An opaque token per row for its group key: a keyed SHA-256 ``H(K || text)`` (the key ``K``
    derived from the nodes' shared secret and the blinding context) over the key values as text,
    each value tagged with its kind. Equal keys at two nodes get equal tokens; the coordinator,
    without the secret, cannot tell which key a token stands for. (SHA-256's length extension
    gives ``H(K || text || pad || x)`` only for texts holding SHA-256's padding, whose 0x80 byte
    no UTF-8 key text contains.) Hashed in DuckDB, column-wise."""
    if not table.num_rows:
        return pa.array([], pa.string())
    # a 128-bit key (32 hex digits): a short key text fits key and value in one SHA-256 block
    k = hashlib.sha256(("genofed-key-blind\x1f" + secret + "\x1f" + query_id).encode()).hexdigest()[:32]
    cols, parts = {}, []
    for i, name in enumerate(keys):
        col = table.column(name)
        t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        kind = ("int" if pa.types.is_integer(t) else "float" if pa.types.is_floating(t) else "bool" if pa.types.is_boolean(t)
                else "dec" if pa.types.is_decimal(t) else "str" if pa.types.is_string(t) or pa.types.is_large_string(t) else str(t))
        cols[f"c{i}"] = col
        kind_sql = (kind + ":").replace("'", "''")
        parts.append(f"coalesce('{kind_sql}' || CAST(c{i} AS VARCHAR), chr(0))")
    cur = _hash_db().cursor()
    try:  # the key text is built and hashed in one DuckDB pass
        cur.register("_keys", pa.table(cols))
        out = cur.sql(f"SELECT left(sha256('{k}' || {' || chr(31) || '.join(parts)}), 32) AS h FROM _keys").to_arrow_table()
    finally:
        cur.close()
    return out.column("h").combine_chunks().cast(pa.string())


_HASH_DB: list[Any] = []
_HASH_LOCK = threading.Lock()


def _hash_db() -> Any:
    """One in-memory DuckDB per process for hashing (a connection costs ~10 ms; cursors are cheap)."""
    with _HASH_LOCK:
        if not _HASH_DB:
            import duckdb

            _HASH_DB.append(duckdb.connect())
        return _HASH_DB[0]
