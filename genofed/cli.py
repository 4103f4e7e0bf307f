"""The ``genofed`` command line. Thin: each command calls one API function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from genofed.engine.errors import GenofedError


def _kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{what} must be NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GenofedError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="genofed")
def main() -> None:
    """genofed: federated SQL over genotypes and clinical data held by several biobanks."""


@main.command()
@click.option("--store", required=True, type=click.Path(path_type=Path), help="node store directory")
@click.option("--vcf", required=True, type=click.Path(path_type=Path), help="VCF or bgzipped VCF")
@click.option("--samples", type=click.Path(path_type=Path), help="sample sheet (TSV/CSV, first column the sample id)")
@click.option("--clinical", multiple=True, metavar="NAME=FILE", help="clinical table (CSV/Parquet with a sample id column)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def ingest(store: Path, vcf: Path, samples: Path | None, clinical: tuple[str, ...], quiet: bool) -> None:
    """Ingest a VCF, a sample sheet and clinical tables into a node store (atomically)."""
    from genofed.connectors.ingest import ingest as run

    r = run(store, vcf, samples, _kv(clinical, "--clinical"), progress=not quiet and sys.stderr.isatty())
    click.echo(f"ingested {r.n_samples} samples × {r.n_variants} variant rows ({r.n_records} VCF records) into {store}")
    for name, n in r.clinical.items():
        click.echo(f"  clinical table {name}: {n} rows")
    for note in r.notes:
        click.echo(f"  note: {note}")


@main.group()
def node() -> None:
    """Run a biobank's node server."""


@node.command("serve")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="node.toml")
@click.option("--store", type=click.Path(path_type=Path), help="override the store in node.toml")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, help="0 picks a free port")
@click.option("--port-file", type=click.Path(path_type=Path), help="write the bound port here once serving")
def node_serve(config_path: Path, store: Path | None, host: str, port: int, port_file: Path | None) -> None:
    """Serve a node store over Arrow Flight."""
    import logging

    from genofed.connectors.config import NodeConfig
    from genofed.connectors.node import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = NodeConfig.load(config_path)
    if store is not None:
        cfg.store = store

    def ready(bound: int) -> None:
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(bound))
            tmp.replace(port_file)

    serve(cfg, host=host, port=port, ready=ready)


@node.command("prepare")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="node.toml")
def node_prepare(config_path: Path) -> None:
    """Prepare the node's backend ahead of the first query (hail: start Hail and convert the
    store to Hail's native format once; duckdb: nothing to do)."""
    import time

    from genofed.connectors.config import NodeConfig
    from genofed.connectors.node import make_backend

    cfg = NodeConfig.load(config_path)
    backend = make_backend(cfg)
    t0 = time.perf_counter()
    start = getattr(backend, "start", None)
    if start is not None:
        start()
    click.echo(f"{cfg.name}: {backend.name} backend ready in {time.perf_counter() - t0:.1f} s")
    backend.close()


@main.group()
def keyholder() -> None:
    """Run the key holder for combine='he'."""


@keyholder.command("serve")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="keyholder.toml")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, type=int, help="0 picks a free port")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), help="write the bound port here")
def keyholder_serve(config_path: Path, host: str, port: int, port_file: Path | None) -> None:
    """Serve the HE key holder: generates keys, aligns node keys, decrypts sums only."""
    import logging

    from genofed.privacy.secure.keyholder import KeyHolderConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(bound: int) -> None:
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(bound))
            tmp.replace(port_file)

    serve(KeyHolderConfig.load(config_path), host=host, port=port, ready=ready)


@main.group()
def federation() -> None:
    """Create, start and stop a local federation."""


@federation.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--vcf", required=True, type=click.Path(path_type=Path))
@click.option("--samples", required=True, type=click.Path(path_type=Path))
@click.option("--split", type=click.Path(path_type=Path), help="TSV: sample id + 'node' column")
@click.option("--nodes", "n_nodes", default=3, show_default=True, help="without --split: deal samples over N nodes")
@click.option("--clinical", multiple=True, metavar="NAME=FILE")
@click.option("--min-count", default=5, show_default=True, help="minimum samples per released group")
@click.option("--combine", type=click.Choice(["mpc", "he", "plain"]), default="mpc", show_default=True, help="the federation's default combine mode")
@click.option("--allow-plain", is_flag=True, help="node policies allow combine='plain' (the coordinator sees node partials; development only)")
@click.option("--no-tls", is_flag=True, help="plain grpc:// links (no CA, no certificates; tokens travel unencrypted)")
def federation_init(directory: Path, vcf: Path, samples: Path, split: Path | None, n_nodes: int, clinical: tuple[str, ...], min_count: int, combine: str,
                    allow_plain: bool, no_tls: bool) -> None:
    """Split a cohort over node stores (with a local HE key holder and, unless --no-tls, a local CA
    and TLS certificates) and write DIRECTORY/federation.toml."""
    from genofed.connectors.federation import init_federation

    fed = init_federation(directory, vcf, samples, split, n_nodes=n_nodes, clinical=_kv(clinical, "--clinical"), min_count=min_count,
                          combine=combine, allow_plain=allow_plain, progress=sys.stderr.isatty(), tls=not no_tls)
    click.echo(f"federation {fed.name!r}: nodes {', '.join(n.name for n in fed.nodes)} in {directory}")


@federation.command("up")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--timeout", default=60.0, show_default=True)
def federation_up(directory: Path, timeout: float) -> None:
    """Start the key holder and one node server per node on free loopback ports."""
    from genofed.connectors.federation import FederationConfig, up

    ports = up(directory, timeout=timeout)
    nodes = {n.name: n for n in FederationConfig.load(directory).nodes}
    for name, port in ports.items():
        click.echo(f"{name}: {'grpc+tls' if nodes[name].tls else 'grpc'}://127.0.0.1:{port}")


@federation.command("down")
@click.argument("directory", type=click.Path(path_type=Path))
def federation_down(directory: Path) -> None:
    """Stop the node servers and the key holder of a local federation."""
    from genofed.connectors.federation import down

    stopped = down(directory)
    click.echo(f"stopped {', '.join(stopped) if stopped else 'nothing (no node was running)'}")


@federation.command("add-researcher")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="a [roles.NAME] every node defines (repeatable; default: every table)")
def federation_add_researcher(directory: Path, name: str, roles: tuple[str, ...]) -> None:
    """Register researcher NAME at every node of a local federation and print their token (once)."""
    from genofed.connectors.federation import add_researcher, running

    token = add_researcher(directory, name, list(roles))
    click.echo(token)
    click.echo(f"researcher {name!r} added at every node (the nodes keep only the token's sha256). This token is shown "
               f"once: hand it to {name} over a secure channel; they connect with genofed.connect(DIR, token=TOKEN).", err=True)
    alive = running(directory)
    if alive:
        click.echo(f"running now: {', '.join(alive)}; restart them to accept the token: genofed federation down {directory} && "
                   f"genofed federation up {directory}", err=True)


@main.group()
def certs() -> None:
    """Certificates for TLS on the Flight links: a local CA, server and client certificates."""


@certs.command("ca")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="genofed local CA", show_default=True, help="the CA's common name")
@click.option("--days", default=825, show_default=True, help="validity")
def certs_ca(directory: Path, name: str, days: int) -> None:
    """Make a certificate authority: DIRECTORY/ca.crt and DIRECTORY/ca.key (mode 0600)."""
    from genofed.connectors.tls import make_ca

    cert, key = make_ca(directory, name=name, days=days)
    click.echo(f"wrote {cert} (give it to clients as [tls] ca) and {key} (keep it private)")


@certs.command("issue")
@click.argument("name")
@click.option("--ca", "ca_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="directory with ca.crt and ca.key")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="write NAME.crt and NAME.key here")
@click.option("--host", "hosts", multiple=True, metavar="NAME|IP", help="server host name or IP (repeat; default localhost and 127.0.0.1)")
@click.option("--client", is_flag=True, help="a client certificate for mutual TLS instead of a server certificate")
@click.option("--days", default=825, show_default=True, help="validity (at most the CA's)")
def certs_issue(name: str, ca_dir: Path, out_dir: Path, hosts: tuple[str, ...], client: bool, days: int) -> None:
    """Issue a server (or --client) certificate NAME signed by the CA in --ca."""
    from genofed.connectors.tls import DEFAULT_HOSTS, make_cert

    cert, key = make_cert(ca_dir, out_dir, name, hosts or DEFAULT_HOSTS, client=client, days=days)
    click.echo(f"wrote {cert} and {key} (mode 0600)")


@certs.command("fingerprint")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def certs_fingerprint(cert: Path) -> None:
    """Print CERT's SHA-256 fingerprint (DER, hex): what other nodes pin for this node in
    [[federation.members]] fingerprint."""
    from genofed.connectors.tls import fingerprint

    click.echo(fingerprint(cert))


@main.command()
@click.argument("sql", required=False)
@click.option("--federation", "fed_dir", required=True, type=click.Path(path_type=Path))
@click.option("--name", "name", help="run a named query from queries/ instead of SQL")
@click.option("--param", multiple=True, metavar="NAME=VALUE", help="named query parameter")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="write here (required for parquet)")
@click.option("--combine", type=click.Choice(["plain", "mpc", "he"]), help="override federation.toml")
@click.option("--explain", is_flag=True, help="print the node fragment and finalize step, run nothing")
@click.option("--epsilon", type=float, help="differential privacy: every node noises its partials and charges ε to your budget")
@click.option("--mechanism", type=click.Choice(["laplace", "gaussian"]), default="laplace", show_default=True)
@click.option("--delta", type=float, help="δ for the gaussian mechanism")
def query(sql: str | None, fed_dir: Path, name: str | None, param: tuple[str, ...], fmt: str, output: Path | None, combine: str | None, explain: bool,
          epsilon: float | None, mechanism: str, delta: float | None) -> None:
    """Run federated SQL (or a named query) and print the released result."""
    import genofed

    if (sql is None) == (name is None):
        raise click.UsageError("give SQL or --name QUERY (one of them)")
    if name is not None:
        from genofed.named import get_query

        sql = get_query(name).render(**_kv(param, "--param"))
    assert sql is not None
    with genofed.connect(fed_dir) as fed:
        if explain:
            click.echo(json.dumps(fed.explain(sql), indent=2))
            return
        res = fed.sql(sql, combine=combine, epsilon=epsilon, mechanism=mechanism, delta=delta)
    table = res.to_arrow()
    if fmt == "parquet":
        if output is None:
            raise click.UsageError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
    elif fmt == "csv":
        text = table.to_pandas().to_csv(index=False)
        output.write_text(text) if output else click.echo(text, nl=False)
    elif fmt == "json":
        text = json.dumps({"rows": table.to_pylist(), "provenance": res.provenance.to_dict()}, default=str, indent=2)
        output.write_text(text) if output else click.echo(text)
    else:
        _print_table(table)
        prov = res.provenance
        click.echo(f"{table.num_rows} rows · nodes {', '.join(prov.nodes)} · combine {prov.combine}", err=True)
        if prov.suppressed:
            click.echo(f"{prov.suppressed} group(s) withheld: {prov.suppression_rule}", err=True)


def _print_table(table) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=True, header_style="bold")
    for c in table.column_names:
        t.add_column(c)
    for row in table.to_pylist():
        t.add_row(*[_fmt(v) for v in row.values()])
    Console().print(t)


def _fmt(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@main.command()
@click.option("--federation", "fed_dir", required=True, type=click.Path(path_type=Path))
@click.option("--node", help="only this node's history")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def history(fed_dir: Path, node: str | None, fmt: str) -> None:
    """List your own releases and refusals at the nodes (query id, time, your SQL, decision, rule).

    Example: genofed history --federation fed --format csv
    """
    import genofed

    with genofed.connect(fed_dir) as fed:
        table = fed.history(node=node)
    if fmt == "csv":
        click.echo(table.to_pandas().to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(table.to_pylist(), indent=2))
    else:
        _print_history(table)
        click.echo(f"{table.num_rows} entries", err=True)


def _print_history(table) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a file or a pipe: no terminal width to fit, keep ids whole
        console = Console(width=200)
    t = Table(show_header=True, header_style="bold")
    cols = ("time", "node", "query_id", "combine", "decision", "rule", "sql")
    for c in cols:
        t.add_column(c, no_wrap=c != "sql", overflow="fold")
    for row in table.select(list(cols)).to_pylist():
        t.add_row(*["" if v is None else " ".join(str(v).split()) for v in row.values()])
    console.print(t)


@main.command()
@click.argument("kind", type=click.Choice(["manhattan", "qq", "pca", "ld-decay"]))
@click.argument("sql", required=False)
@click.option("--federation", "fed_dir", type=click.Path(path_type=Path), help="run SQL (or --name) on this federation")
@click.option("--name", "name", help="a named query from queries/")
@click.option("--param", multiple=True, metavar="NAME=VALUE", help="named query parameter")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="plot a saved result instead (CSV, Parquet or the JSON of `genofed query --format json`)")
@click.option("--scores", help="pca: the node-local scores table written by pca(name => ...); bins it with federated counts")
@click.option("--group", help="pca: column naming each sample's group (default population)")
@click.option("--combine", type=click.Choice(["plain", "mpc", "he"]), help="override federation.toml")
@click.option("--title")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="PNG, SVG or PDF file")
def plot(kind: str, sql: str | None, fed_dir: Path | None, name: str | None, param: tuple[str, ...], input_path: Path | None,
         scores: str | None, group: str | None, combine: str | None, title: str | None, output: Path) -> None:
    """Plot a result: Manhattan, QQ (with λ), PCA scatter or LD decay, to PNG/SVG/PDF."""
    from genofed.api import plot as make_plot
    from genofed.genomics.plots import save

    opts: dict[str, object] = {"title": title} if title else {}
    if input_path is not None:
        if sql or name or fed_dir:
            raise click.UsageError("--input plots a saved result: give no SQL, --name or --federation with it")
        data = _read_result(input_path)
    else:
        import genofed

        if fed_dir is None:
            raise click.UsageError("give --federation (with SQL, --name or --scores) or --input FILE")
        with genofed.connect(fed_dir) as fed:
            if kind == "pca" and scores:
                data = fed.pca_cells(scores, group=group or "population", combine=combine).to_arrow()
                opts |= {"x": "pc1", "y": "pc2", "group": "group", "count": "n"}
            else:
                if (sql is None) == (name is None):
                    raise click.UsageError("give SQL or --name QUERY (one of them)")
                if name is not None:
                    from genofed.named import get_query

                    sql = get_query(name).render(**_kv(param, "--param"))
                assert sql is not None
                data = fed.sql(sql, combine=combine).to_arrow()
    if kind == "pca" and "group" not in opts and group:
        opts["group"] = group
    try:
        fig = make_plot(kind, data, **opts)
        path = save(fig, output)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"wrote {path}")


def _read_result(path: Path):
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix == ".json":
        rows = json.loads(path.read_text())
        return pa.Table.from_pylist(rows["rows"] if isinstance(rows, dict) else rows)
    import pyarrow.csv as pcsv

    return pcsv.read_csv(path)


@main.group()
def audit() -> None:
    """A node's hash-chained audit log (for data stewards)."""


def _audit_file(path: Path) -> Path:
    if path.suffix == ".toml":  # a node.toml: its configured log
        from genofed.connectors.config import NodeConfig

        p = NodeConfig.load(path).audit_path()
        assert p is not None
        return p
    return path


@audit.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def audit_verify(path: Path) -> None:
    """Check the log's hash chain (PATH: the log, or the node.toml that names it)."""
    from genofed.privacy.audit import verify

    v = verify(_audit_file(path))
    if v.ok:
        click.echo(f"ok: {v.lines} records, chain intact")
        return
    click.echo(f"TAMPERED or damaged at line {v.line}: {v.problem} ({v.lines} records verified before it)", err=True)
    sys.exit(1)


@audit.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--researcher", help="only this researcher's records")
@click.option("--event", help="only this event (release, refused, auth_failed, ...)")
@click.option("--last", "last", type=int, default=50, show_default=True, help="the last N matching records (0: all)")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def audit_show(path: Path, researcher: str | None, event: str | None, last: int, as_json: bool) -> None:
    """Show audit records (verify the chain first with `genofed audit verify`)."""
    from genofed.privacy.audit import records

    rows = [r for r in records(_audit_file(path))
            if (researcher is None or r.get("researcher") == researcher) and (event is None or r.get("event") == event)]
    if last:
        rows = rows[-last:]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    cols = ["seq", "time", "event", "researcher", "decision", "rule", "combine", "groups", "query_id", "fragment_sha256"]
    click.echo("\t".join(cols))
    for r in rows:
        click.echo("\t".join("" if r.get(c) is None else str(r.get(c))[:16] if c == "fragment_sha256" else str(r.get(c)) for c in cols))


@main.group()
def policy() -> None:
    """Node policy files (for data stewards)."""


@policy.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(path: Path) -> None:
    """Validate a node.toml: errors (the node would refuse to start) and warnings, each with the
    line of the offending key. Exit status 1 on an error."""
    from genofed.connectors.policycheck import check_policy

    findings = check_policy(path)
    for f in findings:
        click.echo(f.format(path), err=f.level == "error")
    if any(f.level == "error" for f in findings):
        sys.exit(1)
    click.echo(f"{path}: ok ({sum(f.level == 'warning' for f in findings)} warnings)")


@main.group()
def queries() -> None:
    """List and show the named queries."""


@queries.command("list")
def queries_list() -> None:
    from genofed.named import list_queries

    for q in list_queries().values():
        click.echo(f"{q.name:32s} {q.title}")


@queries.command("show")
@click.argument("name")
def queries_show(name: str) -> None:
    from genofed.named import get_query

    q = get_query(name)
    click.echo(f"{q.title}\n\n{q.description}\n")
    for p in q.params:
        click.echo(f"  --param {p.name}=<{p.type}> (default {p.default!r}) {p.doc}")
    click.echo(f"\n{q.sql}")


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("demo-federation"), show_default=True)
@click.option("--n-samples", default=3000, show_default=True)
@click.option("--keep-running", is_flag=True, help="leave the nodes up afterwards")
def demo(directory: Path, n_samples: int, keep_running: bool) -> None:
    """Simulate a cohort, split it over three nodes, run the named queries, stop the nodes."""
    from genofed.demo import run_demo

    run_demo(directory, n_samples=n_samples, keep_running=keep_running)


@main.group()
def synth() -> None:
    """Synthetic genotypes: train a model across the nodes, release only what the audit passes."""


@synth.command("train")
@click.option("--federation", "fed_dir", required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="model file (.npz)")
@click.option("--epsilon", type=float, required=True, help="differential privacy ε for the whole training, at every node")
@click.option("--population", help="SQL expression of each sample's population (default: super_pop, population or pop)")
@click.option("--order", default=2, show_default=True, help="Markov order")
@click.option("--holdout", default=0.2, show_default=True, help="fraction of each node's samples kept out (audit non-members)")
@click.option("--canaries", default=2, show_default=True, help="secret canary genomes each node plants")
@click.option("--seed", default=1, show_default=True)
@click.option("--variants", help="SQL predicate over variants")
def synth_train(fed_dir: Path, out: Path, epsilon: float, population: str | None, order: int, holdout: float, canaries: int,
                seed: int, variants: str | None) -> None:
    """Train the haplotype Markov model; only noisy, securely summed counts leave the nodes."""
    import genofed

    with genofed.connect(fed_dir) as fed:
        model = fed.synth_train(epsilon=epsilon, population=population, order=order, holdout=holdout, canaries=canaries,
                                seed=seed, variants=variants)
    model.save(out)
    click.echo(f"model: {out} ({model.n_variants:,} variants, populations {', '.join(model.populations)}, "
               f"ε = {epsilon:g}, noise scale per summed count {model.provenance.get('noise_scale_total', 0):.2f})")


@synth.command("release")
@click.option("--federation", "fed_dir", required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-n", "n", required=True, type=int, help="synthetic samples")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="the VCF (.vcf.gz, written only if released)")
@click.option("--report", type=click.Path(path_type=Path), help="report (.html or .pdf; default beside --out)")
@click.option("--seed", default=1, show_default=True)
def synth_release(fed_dir: Path, model_path: Path, n: int, out: Path, report: Path | None, seed: int) -> None:
    """Sample, audit at the nodes, and write the VCF only if every privacy criterion passes
    (exit status 1 when refused)."""
    import genofed

    with genofed.connect(fed_dir) as fed:
        res = fed.synth_release(model_path, n, out, report, seed=seed)
    for row in res.report["privacy"]:
        click.echo(f"{'ok  ' if row['pass'] else 'FAIL'} {row['name']}: {row['value']} ({row['threshold']})")
    for row in res.report["utility"]:
        click.echo(f"     {row['name']}: {row['value']} (target {row['target']})")
    click.echo(f"report: {res.report['report_path']}")
    if not res.passed:
        click.echo("refused: " + "; ".join(res.report["reasons"]), err=True)
        sys.exit(1)
    click.echo(f"released: {out}")


@synth.command("evaluate")
@click.option("--federation", "fed_dir", required=True, type=click.Path(path_type=Path))
@click.option("--vcf", required=True, type=click.Path(exists=True, path_type=Path), help="any synthetic VCF")
@click.option("--populations", type=click.Path(exists=True, path_type=Path), help="TSV: sample id, population label")
@click.option("--report", required=True, type=click.Path(path_type=Path), help="report (.html or .pdf)")
def synth_evaluate(fed_dir: Path, vcf: Path, populations: Path | None, report: Path) -> None:
    """Audit any synthetic VCF against the nodes' cohorts (only scores leave them); releases nothing."""
    import genofed
    from genofed.genomics import synth as S
    from genofed.genomics import synth_audit

    labels = None
    if populations is not None:
        rows = [ln.split("\t") for ln in populations.read_text().splitlines() if ln.strip()]
        labels = {r[0]: r[1].strip() for r in rows if len(r) >= 2}
    syn = S.SyntheticSet.from_vcf(vcf, labels)
    with genofed.connect(fed_dir) as fed:
        res = synth_audit.evaluate(fed._coord, syn, report)
    for row in res.report["privacy"] + res.report["utility"]:
        click.echo(f"{row['name']}: {row['value']} ({row.get('threshold') or row.get('target')})")
    click.echo(f"report: {report}")


@main.command()
@click.option("--federation", "fed_dir", required=True, type=click.Path(path_type=Path))
@click.option("--features", required=True, help="feature file NAME.sql: one SELECT returning sample_id, the label and numeric features")
@click.option("--label", required=True, help="the 0/1 column of the feature query to predict")
@click.option("--model", "model_name", type=click.Choice(["logistic", "mlp"]), default="logistic", show_default=True)
@click.option("--strategy", type=click.Choice(["fedavg", "fedprox", "exact"]), default=None,
              help="fedavg (default), fedprox, or exact: federated Newton–Raphson, the pooled logistic regression")
@click.option("--variants", "variants_file", type=click.Path(exists=True, path_type=Path), help="file of variant_ids (one per line): dosages as features")
@click.option("--variants-sql", help="a federated query returning the variant_ids to use as features")
@click.option("--rounds", default=20, show_default=True)
@click.option("--local-epochs", default=5, show_default=True)
@click.option("--lr", default=0.5, show_default=True)
@click.option("--l2", default=0.0, show_default=True, help="L2 penalty on the weights")
@click.option("--mu", default=0.0, show_default=True, help="FedProx proximal term")
@click.option("--hidden", default=16, show_default=True, help="MLP hidden units")
@click.option("--seed", default=0, show_default=True)
@click.option("--plain", is_flag=True, help="send updates without SecAgg+ (only where every node's policy allows it)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("model"), show_default=True, help="output folder")
@click.option("--superlink", help="host:port of a running Flower SuperLink (default: start a local deployment)")
@click.option("--poll-interval", default=0.1, show_default=True, help="idle poll of the SuperNodes and the server, seconds")
@click.option("--timeout", default=1800.0, show_default=True)
def train(fed_dir: Path, features: str, label: str, model_name: str, strategy: str | None, variants_file: Path | None,
          variants_sql: str | None, rounds: int, local_epochs: int, lr: float, l2: float, mu: float, hidden: int, seed: int,
          plain: bool, out: Path, superlink: str | None, poll_interval: float, timeout: float) -> None:
    """Train a model across the nodes with Flower; only (securely summed) model updates leave them."""
    import genofed

    variants = [ln.strip() for ln in variants_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")] if variants_file else None

    def progress(ev: dict) -> None:
        if ev.get("event") == "round":
            extra = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()
                             if k not in ("event", "t", "round", "stage", "seconds"))
            click.echo(f"round {ev.get('round')} {ev.get('stage')}: {ev.get('seconds', 0):.2f} s {extra}")
        elif ev.get("event") == "start":
            click.echo(f"{ev['nodes']} nodes, {ev['strategy']} {ev['model']}, {'SecAgg+' if ev['secagg'] else 'plain'}")

    res = genofed.train(fed_dir, features, label, model=model_name, strategy=strategy or ("fedprox" if mu > 0 else "fedavg"),
                    variants=variants, variants_sql=variants_sql, rounds=rounds, local_epochs=local_epochs, lr=lr, l2=l2,
                    mu=mu, hidden=hidden, seed=seed, secagg=not plain, out=out, superlink=superlink,
                    poll_interval=poll_interval, timeout=timeout, progress=progress)
    m = res["metrics"]
    click.echo(f"pooled-equivalent: AUC {m['auc']:.4f}, Brier {m['brier']:.4f}, log loss {m['log_loss']:.4f}, "
               f"ECE {m['ece']:.4f} (n = {res['n_total']})")
    for i, nm in enumerate(res["node_metrics"]):
        if "auc" in nm:
            click.echo(f"node {i + 1}: AUC {nm['auc']:.4f}, Brier {nm['brier']:.4f}")
    if res.get("coefficients"):
        for k, v in list(res["coefficients"].items())[:20]:
            click.echo(f"  {k:>30s} {v: .6f}")
    click.echo(f"model: {out}/model.npz, result: {out}/result.json")


if __name__ == "__main__":
    main()
