"""A researcher who bypasses the coordinator and calls a node directly gets no more than through it."""

from __future__ import annotations

import json

import pyarrow.flight as flight
import pytest

from genofed import DisclosureError, NodeError
from genofed.connectors.client import FlightTransport
from genofed.connectors.federation import FederationConfig
from genofed.connectors.tls import flight_client
from genofed.engine import protocol as P


@pytest.fixture(scope="module")
def node_a(fed_dir_1126, fed1126_k5):
    # the k5 federation's nodes run with min_count = 5
    cfg = FederationConfig.load(fed1126_k5.config.root)
    n = cfg.nodes[0]
    t = FlightTransport(n.name, n.location(cfg.root), n.token, tls=cfg.client_tls())
    yield t
    t.close()


@pytest.mark.parametrize(
    "sql, match",
    [
        ("SELECT samples.sample_id AS _k0, COUNT(*) AS _p0 FROM samples GROUP BY samples.sample_id", "per-person rows"),
        ("SELECT samples.outcome AS _p0 FROM samples", "must be a partial aggregate"),
        ("SELECT samples.population AS x, COUNT(*) AS _p0 FROM samples GROUP BY samples.population", "neither a key"),
        ("SELECT COUNT(*) AS _p0 FROM samples HAVING COUNT(*) > 1", "HAVING is applied by the coordinator"),
        ("SELECT COUNT(*) AS _p0 FROM read_parquet('/etc/passwd')", "table functions"),
        ("DROP TABLE samples", "only SELECT queries are supported"),
        ("SELECT MAX(samples.outcome) AS _p0 FROM samples", "MIN/MAX"),
    ],
)
def test_node_refuses_hand_made_fragments(node_a, sql, match):
    with pytest.raises((NodeError, DisclosureError), match=match):
        node_a.run_fragment(sql, "direct", timeout=10)


def test_node_applies_its_own_minimum_count(node_a):
    t = node_a.run_fragment(
        "SELECT samples.population AS _k0, samples.sex AS _k1, samples.status AS _k2, COUNT(*) AS _p0 "
        "FROM samples GROUP BY samples.population, samples.sex, samples.status", "direct", timeout=10)
    rows = t.to_pylist()
    # withheld cells do not leave the node at all, keys included (rule 3): only how many, by rule,
    # and their blinded keys (opaque without the nodes' shared secret)
    withheld = json.loads(t.schema.metadata[P.META_WITHHELD])
    assert withheld.get("min_count", 0) > 0, "some cells at one node are below 5"
    tokens = json.loads(t.schema.metadata[P.META_WITHHELD_TOKENS])
    assert len(tokens) == withheld["min_count"] and all(len(x) == 32 for x in tokens)
    assert not any(r[P.SUPPRESSED_COLUMN] for r in rows)
    assert all(r["_p0"] >= 5 for r in rows)
    assert t.schema.metadata[P.META_MIN_COUNT] == b"5"


@pytest.mark.parametrize("ticket", [b"not json", b'{"kind": "fragment"}', b'{"v": 99, "kind": "fragment", "sql": "SELECT 1"}', b"[1, 2]"])
def test_malformed_tickets(node_a, ticket):
    client = flight_client(node_a.location, node_a.tls)
    opts = flight.FlightCallOptions(headers=node_a._headers, timeout=10)
    with pytest.raises(flight.FlightServerError) as e:
        client.do_get(flight.Ticket(ticket), opts).read_all()
    body = P.decode_error(str(e.value))
    assert body is not None and body["code"] == P.CODE_BAD_REQUEST
    assert "Traceback" not in str(e.value)
    client.close()


def test_no_token(node_a):
    client = flight_client(node_a.location, node_a.tls)
    with pytest.raises(flight.FlightUnauthenticatedError, match="no bearer token"):
        list(client.do_action(flight.Action(P.ACTION_CATALOG, b""), flight.FlightCallOptions(timeout=10)))
    client.close()


def test_concurrent_queries_are_isolated(fed1126):
    """Row-wise genotype queries register per-request tables; parallel queries must not see each other's."""
    import concurrent.futures as cf

    queries = {
        "SELECT g.dosage, count(*) AS n FROM genotypes g WHERE g.chrom = '22' AND g.pos < 17000000 GROUP BY 1 ORDER BY 1": None,
        "SELECT g.dosage, count(*) AS n FROM genotypes g WHERE g.chrom = '21' GROUP BY 1 ORDER BY 1": None,
        "SELECT population, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1": None,
        "SELECT s.sex, allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) WHERE g.chrom = 'X' GROUP BY 1 ORDER BY 1": None,
    }
    for q in queries:
        queries[q] = fed1126.sql(q).to_arrow().to_pylist()
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [(q, pool.submit(lambda q=q: fed1126.sql(q).to_arrow().to_pylist())) for q in list(queries) * 4]
        for q, f in futures:
            assert f.result(timeout=120) == queries[q]
