"""Node configuration (``node.toml``), read by ``genofed node serve``.

Example::

    [node]
    name = "biobank_A"
    store = "store"            # relative to this file
    backend = "duckdb"         # or "hail": Hail on Spark, for a biobank beyond one machine

    [hail]                     # backend = "hail" only (docs/hail-backend.md)
    master = "local[*]"        # or spark://host:7077, yarn, k8s://...
    tmp_dir = ""               # Hail scratch, visible to every executor (default: system temp)
    driver_memory = "4g"
    data_dir = ""              # the store's Hail tables (default: next to the store); a shared URI on a cluster
    analyses = "refuse"        # or "embedded": GWAS/PCA/LD on this machine's numpy kernels, not on Spark

    [policy]
    min_count = 5              # groups with 1..min_count-1 samples are suppressed
    allow_min_max = false
    allow_plain = false        # true lets the coordinator see this node's partials (development)
    max_genotype_cells = 200000000
    min_mac = 5                # per-variant analyses: fewest copies of the minor allele (default: min_count; rule 5)
    min_cases = 5              # association tests and logistic GWAS: fewest cases per test
    min_controls = 5           # ... and fewest controls
    glm_max_param_ratio = 0.33 # model parameters ≤ ratio × this node's samples (DataSHIELD nfilter.glm)
    hidden_columns = ["phenotypes.zip", "samples.family_id"]   # never queryable, not in the catalog
    differencing = true        # the linear audit of person sets per statistic (rule 4): refuse releases that determine < min_count people
    quasi_identifiers = ["phenotypes.zip", "phenotypes.birth_date", "samples.sex"]  # k-anonymous at this node
    rate_limit_per_minute = 600   # requests per researcher (0: unlimited); roles may set their own
    identifiers = ["samples.family_id"]   # like sample_id: join keys only, never values (rule 1)
    dominance = 0.9            # largest share one person may hold of a released sum (1: off)

    [federation]
    key_secret = "..."         # shared by the federation's nodes (never the researcher): blinds group keys, keys MPC links
    ca = "../tls/ca.crt"       # the CA of the members' certificates (MPC links are mutual TLS)
    quorum = 3                 # members a secure computation needs, this node included (default: every member)

    [[federation.members]]     # the federation, pinned by this node: the coordinator cannot add, drop or swap a party
    name = "node_1"
    fingerprint = "<sha256 hex of node_1's certificate (DER)>"   # genofed tls fingerprint node_1/tls/node.crt

    [limits]                   # per-query resource limits (defaults shown)
    query_seconds = 300        # wall clock per fragment; also stops when the caller gives up
    memory_mb = 4096           # memory one fragment may use (DuckDB's limit is memory_mb × max_concurrent)
    max_concurrent = 4         # fragments executing at once; more wait for a slot
    queue_seconds = 30         # the longest a fragment waits for a slot before the node answers "busy"
    max_result_rows = 1000000  # groups in one partial answer
    max_scan_genotypes = 10000000000  # samples × variants one fragment may scan (0: unlimited)

    [roles.genetics]           # optional: what researchers with this role may read
    tables = ["samples", "variants", "genotypes"]   # "*" (the default) is every table
    rate_limit_per_minute = 120

    [[researchers]]
    name = "alice"
    token_sha256 = "<sha256 hex of alice's token>"
    roles = ["genetics"]       # optional; without roles a researcher may read every table

    [keyholder]                # needed for combine = "he" only
    location = "grpc://keys.example.org:8815"   # or port_file = "..." for local federations
    token = "<this node's token at the key holder>"
    ca = "../tls/ca.crt"        # TLS: the CA that signed the key holder's certificate (location grpc+tls://)

    [tls]                      # serve grpc+tls:// (see genofed.connectors.tls); paths relative to this file
    cert = "tls/node.crt"
    key = "tls/node.key"
    client_ca = "clients-ca.crt"   # optional: mutual TLS, callers need a certificate signed by it
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genofed.engine.errors import ConfigError
from genofed.privacy.disclosure import DEFAULT_MIN_COUNT

BACKENDS = ("duckdb", "hail")


def hash_token(token: str) -> str:
    """The form a node stores a researcher token in."""
    return hashlib.sha256(token.encode()).hexdigest()


def match_bearer(headers: dict[str, list[str]], known: dict[str, Any], service: str) -> Any:
    """The entry of ``known`` (token sha256 -> who) for a call's bearer token, compared in
    constant time; raises the Flight authentication error otherwise."""
    import hmac

    import pyarrow.flight as flight

    from genofed.engine import protocol as P

    values = headers.get(P.AUTH_HEADER) or headers.get(P.AUTH_HEADER.title()) or []
    token = values[0] if values else ""
    if not token.startswith(P.BEARER):
        raise flight.FlightUnauthenticatedError(P.encode_error(P.CODE_AUTH, "no bearer token; send 'authorization: Bearer <token>'"))
    digest = hash_token(token[len(P.BEARER):])
    for h, who in known.items():
        if hmac.compare_digest(h, digest):
            return who
    raise flight.FlightUnauthenticatedError(P.encode_error(P.CODE_AUTH, f"token not recognised by {service}"))


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML config file, with errors that name the file and the problem."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path}: invalid TOML: {e}") from None


@dataclass
class Role:
    """What researchers holding a role may do at this node."""

    name: str
    tables: list[str] = field(default_factory=lambda: ["*"])
    rate_limit_per_minute: int | None = None


@dataclass(frozen=True)
class ResourceLimits:
    """``[limits]``: what one fragment may use at this node (see :mod:`genofed.engine.limits`)."""

    query_seconds: float = 300.0
    memory_mb: int = 4096
    max_concurrent: int = 4
    queue_seconds: float = 30.0
    max_result_rows: int = 1_000_000
    max_scan_genotypes: int = 10_000_000_000  # 0: unlimited

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> ResourceLimits:
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ConfigError(f"{where}: unknown [limits] keys {sorted(unknown)}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            positive = key not in ("max_scan_genotypes",)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
                bound = "≥ 0 (0 is unlimited)" if not positive else "> 0"
                raise ConfigError(f"{where}: [limits] {key} must be a number {bound}, got {value!r}")
            if key in ("memory_mb", "max_concurrent", "max_result_rows", "max_scan_genotypes") and value != int(value):
                raise ConfigError(f"{where}: [limits] {key} must be a whole number, got {value!r}")
            out[key] = int(value) if key in ("memory_mb", "max_concurrent", "max_result_rows", "max_scan_genotypes") else float(value)
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Researcher:
    name: str
    token_sha256: str
    roles: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Member:
    """A federation member as this node pins it: its name and the SHA-256 fingerprint of its TLS
    certificate (DER; empty for a federation without TLS)."""

    name: str
    fingerprint: str = ""


@dataclass
class NodeConfig:
    name: str
    store: Path
    backend: str = "duckdb"
    min_count: int = DEFAULT_MIN_COUNT
    allow_min_max: bool = False
    allow_plain: bool = False
    mpc_host: str = "127.0.0.1"
    max_genotype_cells: int = 200_000_000
    min_cases: int = 5
    min_controls: int = 5
    min_mac: int | None = None  # fewest copies of the minor allele in a per-variant release (rule 5); None: min_count
    glm_max_param_ratio: float = 0.33
    hidden_columns: list[str] = field(default_factory=list)  # "table.column": not queryable, not in the catalog
    differencing: bool = True  # the linear audit of person sets (privacy/setaudit.py)
    state: str = ""  # [node] state: directory of the node's privacy state (tracker, ledger); default state/ next to node.toml
    quasi_identifiers: list[str] = field(default_factory=list)  # "table.column": groups keyed on them are k-anonymous here
    identifiers: list[str] = field(default_factory=list)  # "table.column": join keys only, like sample_id (disclosure rule 1)
    dominance: float = 0.9  # no released sum may have one person's share of its absolute total above this (rule 2)
    key_secret: str = ""  # [federation] key_secret: shared by the nodes, blinds withheld groups' keys (rule 3)
    members: list[Member] = field(default_factory=list)  # [[federation.members]]: who this node computes with
    quorum: int | None = None  # [federation] quorum: members a secure computation needs (None: all)
    federation_ca: str = ""  # [federation] ca: CA of the members' certificates (relative to node.toml)
    rate_limit_per_minute: int = 600  # per researcher; 0 is unlimited
    roles: dict[str, Role] = field(default_factory=dict)
    dp: Any = None  # [dp]: genofed.privacy.dpnode.DPPolicy (defaults when absent)
    risk: Any = None  # [risk]: genofed.privacy.membership.RiskPolicy (defaults when absent)
    training: Any = None  # [training]: genofed.federated.features.TrainingPolicy (defaults when absent)
    limits: ResourceLimits = field(default_factory=ResourceLimits)  # [limits]
    researchers: list[Researcher] = field(default_factory=list)
    keyholder: dict[str, str] = field(default_factory=dict)
    hail: Any = None  # [hail]: genofed.engine.backends.hail_session.HailSettings (backend = "hail")
    audit: str = ""  # [audit] path
    tls: dict[str, str] = field(default_factory=dict)  # [tls] cert, key, client_ca (read relative to node.toml)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.min_mac is None:
            self.min_mac = self.min_count
        if self.dp is None:
            from genofed.privacy.dpnode import DPPolicy

            self.dp = DPPolicy()
        if self.risk is None:
            from genofed.privacy.membership import RiskPolicy

            self.risk = RiskPolicy()
        if self.training is None:
            from genofed.federated.features import TrainingPolicy

            self.training = TrainingPolicy()

    def model_policy(self) -> dict[str, float]:
        """The model-disclosure rules this node announces to coordinators (and enforces itself)."""
        return {"min_cases": self.min_cases, "min_controls": self.min_controls, "glm_max_param_ratio": self.glm_max_param_ratio}

    def researcher(self, name: str) -> Researcher | None:
        return next((r for r in self.researchers if r.name == name), None)

    def allowed_tables(self, name: str) -> set[str] | None:
        """Tables a researcher may read (None: every table)."""
        r = self.researcher(name)
        if r is None or not r.roles:
            return None
        tables: set[str] = set()
        for role in r.roles:
            if "*" in self.roles[role].tables:
                return None
            tables |= {t.lower() for t in self.roles[role].tables}
        return tables

    def rate_limit(self, name: str) -> int:
        """Requests per minute a researcher may make (0: unlimited): the most generous of their
        roles' limits, else the policy's."""
        r = self.researcher(name)
        limits = [self.roles[x].rate_limit_per_minute for x in (r.roles if r else [])]
        own = [x for x in limits if x is not None]
        if not own:
            return self.rate_limit_per_minute
        return 0 if 0 in own else max(own)

    def audit_path(self) -> Path | None:
        """Where this node appends its hash-chained audit log: ``[audit] path`` (relative to
        node.toml), by default ``audit.log`` next to node.toml; None for a config without a file."""
        if self.audit:
            p = Path(self.audit)
            return p if p.is_absolute() or self.path is None else self.path.parent / p
        return self.path.parent / "audit.log" if self.path is not None else None

    def state_path(self) -> Path | None:
        """Directory of the node's privacy state (released sample sets, DP ledger, release
        cache): ``[node] state`` relative to node.toml, by default ``state/`` next to it; None
        (kept in memory) for a config without a file."""
        if self.state:
            p = Path(self.state)
            return p if p.is_absolute() or self.path is None else self.path.parent / p
        return self.path.parent / "state" if self.path is not None else None

    def keyholder_location(self) -> str:
        """Where this node's key holder listens; raises :class:`ConfigError` if none is set."""
        kh = self.keyholder
        if "location" in kh:
            return kh["location"]
        if "port_file" in kh:
            f = Path(kh["port_file"])
            if not f.is_absolute() and self.path is not None:
                f = self.path.parent / f
            try:
                scheme = "grpc+tls" if kh.get("ca") else "grpc"
                return f"{scheme}://{kh.get('host', '127.0.0.1')}:{int(f.read_text().strip())}"
            except (OSError, ValueError):
                raise ConfigError(f"the key holder is not running (no port in {f})") from None
        raise ConfigError(f"node {self.name!r} has no [keyholder] in its config, so it cannot take part in combine='he'; add location and token")

    def server_tls(self) -> Any:
        """This node's TLS identity (:class:`~genofed.connectors.tls.ServerTLS`), or None to serve plain grpc://."""
        from .tls import ServerTLS

        return ServerTLS.load(self.tls, None, f"{self.path or 'node config'} [tls]")

    def _federation_toml(self) -> dict[str, Any]:
        return {**({"key_secret": self.key_secret} if self.key_secret else {}),
                **({"ca": self.federation_ca} if self.federation_ca else {}),
                **({"quorum": self.quorum} if self.quorum is not None else {}),
                **({"members": [{"name": m.name, **({"fingerprint": m.fingerprint} if m.fingerprint else {})}
                                for m in self.members]} if self.members else {})}

    def federation_ca_path(self) -> Path | None:
        """The CA file of the members' certificates (``[federation] ca``), None when unset."""
        if not self.federation_ca:
            return None
        p = Path(self.federation_ca)
        return p if p.is_absolute() or self.path is None else self.path.parent / p

    def keyholder_tls(self) -> Any:
        """How this node verifies its key holder (``[keyholder] ca``, and ``cert``/``key`` for
        mutual TLS): a :class:`~genofed.connectors.tls.ClientTLS`, or None for plain grpc://."""
        from .tls import ClientTLS, check_table

        where = f"{self.path or 'node config'} [keyholder]"
        table = check_table({k: v for k, v in self.keyholder.items() if k in ("ca", "cert", "key")}, where, "client")
        return ClientTLS.load(table, self.path.parent if self.path else None, where)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeConfig:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"node config {p} does not exist; write one (see docs/stewards.md)")
        return cls.from_dict(load_toml(p, "node config"), base=p.parent, path=p)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path, path: Path | None = None) -> NodeConfig:
        where = str(path or "node config")
        node = data.get("node")
        if not isinstance(node, dict) or "name" not in node:
            raise ConfigError(f"{where}: a [node] table with name = \"...\" is required")
        policy = data.get("policy", {})
        known = {"min_count", "allow_min_max", "allow_plain", "max_genotype_cells", "min_cases", "min_controls", "glm_max_param_ratio",
                 "hidden_columns", "differencing", "quasi_identifiers", "rate_limit_per_minute", "identifiers", "dominance", "min_mac"}
        unknown = set(policy) - known
        if unknown:
            raise ConfigError(f"{where}: unknown [policy] keys {sorted(unknown)}; known: {sorted(known)}")
        min_count = policy.get("min_count", DEFAULT_MIN_COUNT)
        if not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"{where}: [policy] min_count must be an integer ≥ 1, got {min_count!r}")
        for key in ("min_cases", "min_controls"):
            v = policy.get(key, 5)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{where}: [policy] {key} must be an integer ≥ 0, got {v!r}")
        min_mac = policy.get("min_mac", min_count)
        if isinstance(min_mac, bool) or not isinstance(min_mac, int) or min_mac < 1:
            raise ConfigError(f"{where}: [policy] min_mac must be an integer ≥ 1 (the fewest copies of the minor allele a "
                              f"per-variant release may rest on; default min_count = {min_count}), got {min_mac!r}")
        ratio = policy.get("glm_max_param_ratio", 0.33)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ConfigError(f"{where}: [policy] glm_max_param_ratio must be a number in (0, 1], got {ratio!r}")
        hidden = policy.get("hidden_columns", [])
        if not isinstance(hidden, list) or not all(isinstance(h, str) and h.count(".") == 1 for h in hidden):
            raise ConfigError(f"{where}: [policy] hidden_columns must be a list of \"table.column\" strings, got {hidden!r}")
        if any(h.split(".")[1] == "sample_id" for h in hidden):
            raise ConfigError(f"{where}: [policy] hidden_columns cannot hide sample_id (it joins the tables; it is never released anyway)")
        qis = policy.get("quasi_identifiers", [])
        if not isinstance(qis, list) or not all(isinstance(h, str) and h.count(".") == 1 for h in qis):
            raise ConfigError(f"{where}: [policy] quasi_identifiers must be a list of \"table.column\" strings, got {qis!r}")
        idents = policy.get("identifiers", [])
        if not isinstance(idents, list) or not all(isinstance(h, str) and h.count(".") == 1 for h in idents):
            raise ConfigError(f"{where}: [policy] identifiers must be a list of \"table.column\" strings, got {idents!r}")
        dominance = policy.get("dominance", 0.9)
        if isinstance(dominance, bool) or not isinstance(dominance, (int, float)) or not 0.5 <= dominance <= 1:
            raise ConfigError(f"{where}: [policy] dominance must be a number from 0.5 to 1 (the largest share of a sum one "
                              f"person may hold; 1 switches the rule off), got {dominance!r}")
        fed = data.get("federation", {})
        if not isinstance(fed, dict) or set(fed) - {"key_secret", "members", "quorum", "ca"}:
            raise ConfigError(f"{where}: [federation] may hold key_secret (a secret shared by the federation's nodes only), "
                              "ca, quorum and [[federation.members]] (name, fingerprint)")
        key_secret = fed.get("key_secret", "")
        if not isinstance(key_secret, str) or (key_secret and len(key_secret) < 16):
            raise ConfigError(f"{where}: [federation] key_secret must be a string of at least 16 characters")
        members = _members(fed.get("members", []), where)
        quorum = fed.get("quorum")
        if quorum is not None and (type(quorum) is not int or not 3 <= quorum <= max(3, len(members))):
            raise ConfigError(f"{where}: [federation] quorum must be an integer from 3 (an honest majority needs three parties) "
                              f"to the number of members ({len(members)}), got {quorum!r}")
        fed_ca = fed.get("ca", "")
        if not isinstance(fed_ca, str):
            raise ConfigError(f"{where}: [federation] ca must be a path to a PEM file")
        rate = policy.get("rate_limit_per_minute", 600)
        if not isinstance(rate, int) or isinstance(rate, bool) or rate < 0:
            raise ConfigError(f"{where}: [policy] rate_limit_per_minute must be an integer ≥ 0 (0 is unlimited), got {rate!r}")
        roles: dict[str, Role] = {}
        raw_roles = data.get("roles", {})
        if not isinstance(raw_roles, dict):
            raise ConfigError(f"{where}: [roles] must be tables like [roles.genetics]")
        for rname, body in raw_roles.items():
            if not isinstance(body, dict):
                raise ConfigError(f"{where}: [roles.{rname}] must be a table")
            extra = set(body) - {"tables", "rate_limit_per_minute"}
            if extra:
                raise ConfigError(f"{where}: [roles.{rname}] unknown keys {sorted(extra)}; known: ['rate_limit_per_minute', 'tables']")
            tables = body.get("tables", ["*"])
            if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
                raise ConfigError(f"{where}: [roles.{rname}] tables must be a list of table names (or [\"*\"]), got {tables!r}")
            rl = body.get("rate_limit_per_minute")
            if rl is not None and (not isinstance(rl, int) or isinstance(rl, bool) or rl < 0):
                raise ConfigError(f"{where}: [roles.{rname}] rate_limit_per_minute must be an integer ≥ 0, got {rl!r}")
            roles[rname] = Role(rname, list(tables), rl)
        from genofed.privacy.dpnode import DPPolicy

        raw_dp = data.get("dp", {})
        if not isinstance(raw_dp, dict):
            raise ConfigError(f"{where}: [dp] must be a table")
        dp_policy = DPPolicy.from_dict(raw_dp, where)
        from genofed.privacy.membership import RiskPolicy

        raw_risk = data.get("risk", {})
        if not isinstance(raw_risk, dict):
            raise ConfigError(f"{where}: [risk] must be a table")
        risk_policy = RiskPolicy.from_dict(raw_risk, where)
        from genofed.federated.features import TrainingPolicy

        raw_training = data.get("training", {})
        if not isinstance(raw_training, dict):
            raise ConfigError(f"{where}: [training] must be a table")
        training = TrainingPolicy.from_dict(raw_training, where)
        raw_limits = data.get("limits", {})
        if not isinstance(raw_limits, dict):
            raise ConfigError(f"{where}: [limits] must be a table")
        limits = ResourceLimits.from_dict(raw_limits, where)
        researchers = []
        for i, r in enumerate(data.get("researchers", [])):
            if "name" not in r or "token_sha256" not in r:
                raise ConfigError(f"{where}: [[researchers]] entry {i + 1} needs name and token_sha256")
            tok = str(r["token_sha256"]).lower()
            if len(tok) != 64 or any(c not in "0123456789abcdef" for c in tok):
                raise ConfigError(f"{where}: [[researchers]] {r['name']!r}: token_sha256 must be 64 hex digits (the sha256 of the token: "
                                  "printf %s TOKEN | sha256sum); never put the token itself in node.toml")
            rr = r.get("roles", [])
            if not isinstance(rr, list) or any(x not in roles for x in rr):
                raise ConfigError(f"{where}: [[researchers]] {r['name']!r}: roles must name [roles.*] tables defined in this file "
                                  f"(defined: {sorted(roles)}), got {rr!r}")
            researchers.append(Researcher(r["name"], tok, list(rr)))
        if not researchers:
            raise ConfigError(f"{where}: no [[researchers]]: nobody could query this node; add one with a token_sha256")
        keyholder = data.get("keyholder", {})
        if keyholder and ("token" not in keyholder or not ({"location", "port_file"} & set(keyholder))):
            raise ConfigError(f"{where}: [keyholder] needs token and location (or port_file)")
        from .tls import check_table

        tls = check_table(data.get("tls"), where, "server", base=base)
        check_table({k: v for k, v in keyholder.items() if k in ("ca", "cert", "key")}, f"{where} [keyholder]", "client")
        backend = str(node.get("backend", "duckdb"))
        if backend not in BACKENDS:
            raise ConfigError(f"{where}: [node] backend = {backend!r} is not a backend; choose one of {', '.join(BACKENDS)}")
        from genofed.engine.backends.hail_session import HailSettings

        try:
            hail = HailSettings.from_dict(data.get("hail"))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        store = Path(node.get("store", "store"))
        if not store.is_absolute():
            store = base / store
        return cls(
            name=node["name"],
            store=store,
            backend=backend,
            hail=hail,
            min_count=min_count,
            allow_min_max=bool(policy.get("allow_min_max", False)),
            allow_plain=bool(policy.get("allow_plain", False)),
            mpc_host=str(node.get("mpc_host", "127.0.0.1")),
            max_genotype_cells=int(policy.get("max_genotype_cells", 200_000_000)),
            min_cases=int(policy.get("min_cases", 5)),
            min_controls=int(policy.get("min_controls", 5)),
            min_mac=min_mac,
            glm_max_param_ratio=float(ratio),
            hidden_columns=[h.lower() for h in hidden],
            differencing=bool(policy.get("differencing", True)),
            quasi_identifiers=[h.lower() for h in qis],
            identifiers=[h.lower() for h in idents],
            dominance=float(dominance),
            key_secret=key_secret,
            members=members,
            quorum=quorum,
            federation_ca=fed_ca,
            rate_limit_per_minute=rate,
            roles=roles,
            dp=dp_policy,
            risk=risk_policy,
            training=training,
            limits=limits,
            state=str(node.get("state", "")),
            researchers=researchers,
            keyholder={k: str(v) for k, v in keyholder.items()},
            audit=str((data.get("audit") or {}).get("path", "")),
            tls=tls,
            path=path,
        )

    def to_toml(self) -> dict[str, Any]:
        return {
            "node": {"name": self.name, "store": str(self.store), "backend": self.backend, "mpc_host": self.mpc_host,
                     **({"state": self.state} if self.state else {})},
            "policy": {
                "min_count": self.min_count,
                "allow_min_max": self.allow_min_max,
                "allow_plain": self.allow_plain,
                "max_genotype_cells": self.max_genotype_cells,
                "min_cases": self.min_cases,
                "min_controls": self.min_controls,
                "glm_max_param_ratio": self.glm_max_param_ratio,
                **({"hidden_columns": list(self.hidden_columns)} if self.hidden_columns else {}),
                "differencing": self.differencing,
                "rate_limit_per_minute": self.rate_limit_per_minute,
                **({"quasi_identifiers": list(self.quasi_identifiers)} if self.quasi_identifiers else {}),
                **({"identifiers": list(self.identifiers)} if self.identifiers else {}),
                **({"dominance": self.dominance} if self.dominance != 0.9 else {}),
                **({"min_mac": self.min_mac} if self.min_mac not in (None, self.min_count) else {}),
            },
            **({"federation": self._federation_toml()} if self.key_secret or self.members else {}),
            **({"roles": {r.name: {"tables": r.tables, **({"rate_limit_per_minute": r.rate_limit_per_minute}
                                                           if r.rate_limit_per_minute is not None else {})}
                          for r in self.roles.values()}} if self.roles else {}),
            **({"hail": _hail_toml(self.hail)} if self.backend == "hail" and self.hail is not None else {}),
            **({"risk": dataclasses.asdict(self.risk)} if self.risk is not None and self.risk != type(self.risk)() else {}),
            **({"training": self.training.to_dict()} if self.training is not None and self.training != type(self.training)() else {}),
            **({"limits": self.limits.to_dict()} if self.limits != ResourceLimits() else {}),
            **({"dp": self.dp.to_dict()} if self.dp is not None and self.dp.to_dict() != type(self.dp)().to_dict() else {}),
            "researchers": [{"name": r.name, "token_sha256": r.token_sha256, **({"roles": r.roles} if r.roles else {})}
                            for r in self.researchers],
            **({"keyholder": dict(self.keyholder)} if self.keyholder else {}),
            **({"audit": {"path": self.audit}} if self.audit else {}),
            **({"tls": dict(self.tls)} if self.tls else {}),
        }


def _members(raw: Any, where: str) -> list[Member]:
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise ConfigError(f"{where}: [[federation.members]] must be tables with a name and a fingerprint")
    out: list[Member] = []
    for m in raw:
        name, fp = m.get("name"), m.get("fingerprint", "")
        if set(m) - {"name", "fingerprint"} or not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: a [[federation.members]] entry holds name (the member node's name) and fingerprint only")
        if not isinstance(fp, str) or (fp and (len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp.lower()))):
            raise ConfigError(f"{where}: member {name!r}: fingerprint must be the SHA-256 of its certificate (DER) as 64 hex "
                              "digits (genofed tls fingerprint CERT prints it)")
        out.append(Member(name, fp.lower()))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: [[federation.members]] names a member twice")
    return out


def _hail_toml(h: Any) -> dict[str, Any]:
    return {"master": h.master, "driver_memory": h.driver_memory, **({"tmp_dir": h.tmp_dir} if h.tmp_dir else {}),
            **({"data_dir": h.data_dir} if h.data_dir else {}),
            **({"spark_conf": dict(h.spark_conf)} if h.spark_conf else {})}
