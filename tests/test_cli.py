"""The CLI against a running federation: formats, named queries, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

GENOFED = [sys.executable, "-m", "genofed.cli"]


def run(*args, check=True):
    p = subprocess.run([*GENOFED, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_query_formats(fed_dir_1126, fed1126, tmp_path):
    sql = "SELECT sex, count(*) AS n FROM samples GROUP BY sex ORDER BY sex"
    csv = run("query", "--federation", fed_dir_1126, "--format", "csv", sql).stdout
    assert csv.splitlines()[0] == "sex,n"
    assert sum(int(line.split(",")[1]) for line in csv.splitlines()[1:]) == 1126
    js = json.loads(run("query", "--federation", fed_dir_1126, "--format", "json", sql).stdout)
    assert js["provenance"]["nodes"] == ["biobank_A", "biobank_B", "biobank_C"]
    out = tmp_path / "r.parquet"
    run("query", "--federation", fed_dir_1126, "--format", "parquet", "-o", out, sql)
    assert pq.read_table(out).num_rows == 2
    table = run("query", "--federation", fed_dir_1126, sql)
    assert "combine plain" in table.stderr


def test_errors_exit_2_with_message(fed_dir_1126, fed1126):
    wrong = run("query", "--federation", fed_dir_1126, "--name", "allele_freq_by_pop", check=False)
    assert wrong.returncode == 2 and "unknown column" in wrong.stderr and "super_pop" in wrong.stderr
    p = run("query", "--federation", fed_dir_1126, "SELECT * FROM samples", check=False)
    assert p.returncode == 2
    assert p.stderr.startswith("error: row-level results are refused")
    assert "Traceback" not in p.stderr


def test_named_queries(fed_dir_1126, fed1126):
    names = run("queries", "list").stdout
    assert "allele_freq_by_super_pop" in names
    shown = run("queries", "show", "allele_freq_by_pop").stdout
    assert "--param chrom" in shown
    out = run("query", "--federation", fed_dir_1126, "--format", "csv", "--name", "variant_qc",
              "--param", "chrom=22", "--param", "start=16000000", "--param", "stop=20000000").stdout
    assert len(out.splitlines()) > 1


def test_explain(fed_dir_1126, fed1126):
    out = json.loads(run("query", "--federation", fed_dir_1126, "--explain", "SELECT sex, avg(outcome) FROM samples GROUP BY sex").stdout)
    assert "GROUP BY" in out["fragment"] and "_combined" in out["finalize"]


def test_ingest_cli_error(tmp_path):
    bad = tmp_path / "x.vcf"
    bad.write_text("not a vcf\n")
    p = run("ingest", "--store", tmp_path / "st", "--vcf", bad, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: ")


def test_combine_option(fed_dir_1126, fed1126):
    sql = "SELECT sex, count(*) AS n, avg(outcome) AS o FROM samples GROUP BY sex ORDER BY sex"
    out = {}
    for mode in ("plain", "mpc", "he"):
        p = run("query", "--federation", fed_dir_1126, "--format", "json", "--combine", mode, sql)
        js = json.loads(p.stdout)
        assert js["provenance"]["combine"] == mode
        out[mode] = js["rows"]
    assert [r["n"] for r in out["mpc"]] == [r["n"] for r in out["plain"]] == [r["n"] for r in out["he"]]
    bad = run("query", "--federation", fed_dir_1126, "--combine", "fhe", sql, check=False)
    assert bad.returncode == 2 and "fhe" in bad.stderr
