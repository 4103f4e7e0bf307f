"""genofed.genomics.synth_report: the release VCF (read back with bcftools/tabix) and the report.

VCF oracle: bcftools query over the written file against the input, sorted by a naive
reference (Python's stable sort over an explicit contig order). Report: the HTML is parsed with
html.parser; embedded images are decoded; PDF pages are counted in the file.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import need_tool
from matplotlib.colors import to_rgba

from genofed.engine.errors import ConfigError, GenofedError
from genofed.genomics import synth_report as sr

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --------------------------------------------------------------------------------------------
# VCF


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return {t: need_tool(t) for t in ("bgzip", "tabix", "bcftools")}


def _variants(seed: int = 3, n_samples: int = 7):
    """Variants out of order over several contigs, with split multi-allelic sites whose rows are
    spread through the input (their input order must be kept)."""
    rng = np.random.default_rng(seed)
    rows = []
    # first-seen order of the non-standard contigs: contigB before contigA
    for chrom in ["X", "10", "contigB", "2", "MT", "1", "Y", "contigA", "22"]:
        for p in rng.choice(np.arange(1_000, 5_000), size=12, replace=False):
            rows.append((chrom, int(p), "A", "G"))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    for at, row in [(0, ("contigB", 999, "A", "G")), (3, ("2", 777, "A", "T")), (20, ("X", 50, "C", "T")), (41, ("2", 777, "A", "C")),
                    (60, ("X", 50, "C", "A")), (90, ("2", 777, "A", "G"))]:
        rows.insert(at, row)
    n = len(rows)
    h1 = rng.integers(0, 2, size=(n, n_samples), dtype=np.uint8)
    h2 = rng.random((n, n_samples)) < 0.3  # bool is accepted too
    return {
        "chrom": [r[0] for r in rows],
        "pos": np.array([r[1] for r in rows], dtype=np.int64),
        "ref": [r[2] for r in rows],
        "alt": np.array([r[3] for r in rows]),
        "variant_id": [f"{c}:{p}:{a}:{b}" for c, p, a, b in rows],
        "sample_ids": [f"SYN{i:03d}" for i in range(n_samples)],
        "hap1": h1,
        "hap2": h2,
    }


_CONTIG_ORDER = ["1", "2", "10", "22", "X", "Y", "MT", "contigB", "contigA"]


def _expected_lines(v) -> list[str]:
    """Reference: a Python stable sort and a per-genotype loop."""
    idx = sorted(range(len(v["pos"])), key=lambda i: (_CONTIG_ORDER.index(v["chrom"][i]), int(v["pos"][i])))
    lines = []
    for i in idx:
        gts = [f"{int(a)}|{int(b)}" for a, b in zip(v["hap1"][i], v["hap2"][i])]
        lines.append("\t".join([v["chrom"][i], str(v["pos"][i]), v["variant_id"][i], *gts]))
    return lines


def _query(tools, path: Path, fmt: str, *extra: str) -> list[str]:
    out = subprocess.run(
        [tools["bcftools"], "query", "-f", fmt, *extra, str(path)],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.splitlines()


def test_vcf_roundtrip_bcftools(tools, tmp_path):
    v = _variants()
    path = sr.write_vcf(tmp_path / "out" / "synth.vcf.gz", **v, header_lines=["##genofed_synth_epsilon=1.0"])
    assert path == tmp_path / "out" / "synth.vcf.gz"
    assert sorted(os.listdir(path.parent)) == ["synth.vcf.gz", "synth.vcf.gz.tbi"]

    got = _query(tools, path, "%CHROM\t%POS\t%ID[\t%GT]\n")
    assert got == _expected_lines(v)
    # the split multi-allelic sites: separate bi-allelic records, input order kept
    assert [g.split("\t")[2] for g in got if g.startswith("2\t777\t")] == ["2:777:A:T", "2:777:A:C", "2:777:A:G"]
    assert [g.split("\t")[2] for g in got if g.startswith("X\t50\t")] == ["X:50:C:T", "X:50:C:A"]
    assert set(_query(tools, path, "%QUAL\t%FILTER\t%INFO\t%REF\t%ALT\n")) >= {".\tPASS\t.\tA\tG"}
    assert {line.split("\t")[1] for line in _query(tools, path, "%QUAL\t%FILTER\n")} == {"PASS"}

    header = subprocess.run([tools["bcftools"], "view", "-h", str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert header[0] == "##fileformat=VCFv4.2"
    assert "##source=genofed-synthetic" in header
    assert "##genofed_synth_epsilon=1.0" in header
    contigs = [re.match(r"##contig=<ID=([^,>]+)", h)[1] for h in header if h.startswith("##contig")]
    assert contigs == _CONTIG_ORDER
    assert header[-1].split("\t")[9:] == v["sample_ids"]

    # the raw text: exact columns, phased GT only
    raw = subprocess.run([tools["bgzip"], "-dc", str(path)], capture_output=True, check=True).stdout.decode()
    body = [line for line in raw.splitlines() if not line.startswith("#")]
    assert len(body) == len(v["pos"])
    first = body[0].split("\t")
    assert first[5:9] == [".", "PASS", ".", "GT"]
    assert all(re.fullmatch(r"[01]\|[01]", g) for line in body for g in line.split("\t")[9:])


def test_vcf_tabix_region(tools, tmp_path):
    v = _variants(seed=11)
    path = sr.write_vcf(tmp_path / "r.vcf.gz", **v)
    got = subprocess.run([tools["tabix"], str(path), "2:700-3000"], capture_output=True, text=True, check=True).stdout.splitlines()
    want = [
        line for line in _expected_lines(v)
        if line.split("\t")[0] == "2" and 700 <= int(line.split("\t")[1]) <= 3000
    ]
    assert len(want) >= 4
    assert [line.split("\t")[2] for line in got] == [w.split("\t")[2] for w in want]
    assert [
        "\t".join(line.split("\t")[:2] + [line.split("\t")[2]] + line.split("\t")[9:]) for line in got
    ] == want
    assert subprocess.run([tools["tabix"], str(path), "contigA"], capture_output=True, text=True, check=True).stdout.count("\n") == 12


def test_vcf_info_fields(tools, tmp_path):
    v = _variants(seed=5, n_samples=2)
    path = sr.write_vcf(tmp_path / "i.vcf.gz", **v, info={"SYNTH": "", "GEN": "markov4"})
    assert set(_query(tools, path, "%INFO/SYNTH\t%INFO/GEN\n")) == {"1\tmarkov4"}


def test_vcf_failure_midwrite_leaves_nothing(tools, tmp_path, monkeypatch):
    v = _variants()
    real_records = sr._records

    def broken(*args, **kwargs):
        gen = real_records(*args, **kwargs)
        yield next(gen)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sr, "_CHUNK_BYTES", 64)  # several blocks, so the failure is mid-stream
    monkeypatch.setattr(sr, "_records", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        sr.write_vcf(tmp_path / "x.vcf.gz", **v)
    assert os.listdir(tmp_path) == []

    # an existing release is left as it was
    (tmp_path / "x.vcf.gz").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        sr.write_vcf(tmp_path / "x.vcf.gz", **v)
    assert sorted(os.listdir(tmp_path)) == ["x.vcf.gz"]
    assert (tmp_path / "x.vcf.gz").read_bytes() == b"old"


def test_vcf_tabix_failure_leaves_nothing(tools, tmp_path, monkeypatch):
    false = shutil.which("false")
    assert false
    monkeypatch.setattr(sr, "_need_tools", lambda: (tools["bgzip"], false))
    with pytest.raises(GenofedError, match="tabix failed"):
        sr.write_vcf(tmp_path / "x.vcf.gz", **_variants())
    assert os.listdir(tmp_path) == []


def test_vcf_rename_failure_leaves_nothing(tools, tmp_path, monkeypatch):
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the index is in place, the VCF rename fails
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(sr.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        sr.write_vcf(tmp_path / "x.vcf.gz", **_variants())
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []


def test_vcf_missing_tools(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError, match=r"bgzip, tabix.*apt-get install tabix"):
        sr.write_vcf(tmp_path / "x.vcf.gz", **_variants())
    assert os.listdir(tmp_path) == ["bin"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hap1": "twos"}, r"hap1 must hold alleles 0 or 1"),
        ({"hap2": "short"}, r"hap2 has shape"),
        ({"sample_ids": "dup"}, r"sample_ids must be unique; 'SYN000'"),
        ({"alt": "multi"}, r"give one row per ALT"),
        ({"ref": "space"}, r"ref\[0\].*whitespace"),
        ({"header_lines": ["#bad"]}, r"starting with '##'"),
        ({"pos": "zero"}, r"1-based"),
    ],
)
def test_vcf_input_errors(tmp_path, change, match):
    v = _variants(n_samples=3)
    key, what = next(iter(change.items()))
    if what == "twos":
        v["hap1"] = v["hap1"] * 2
    elif what == "short":
        v["hap2"] = v["hap2"][:-1]
    elif what == "dup":
        v["sample_ids"] = ["SYN000", "SYN001", "SYN000"]
    elif what == "multi":
        v["alt"] = np.array(["G,T"] + list(v["alt"][1:]))
    elif what == "space":
        v["ref"] = ["A C"] + v["ref"][1:]
    elif what == "zero":
        v["pos"] = v["pos"].copy()
        v["pos"][3] = 0
    else:
        v[key] = what
    with pytest.raises(ValueError, match=match):
        sr.write_vcf(tmp_path / "x.vcf.gz", **v)
    assert os.listdir(tmp_path) == []


def test_vcf_path_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.vcf\.gz"):
        sr.write_vcf(tmp_path / "x.vcf", **_variants(n_samples=3))


def test_vcf_speed(tools, tmp_path):
    """2,000 samples x 5,000 variants (a fifth of the target size) well within a second or two;
    a per-genotype Python loop would take several seconds here."""
    rng = np.random.default_rng(0)
    nv, ns = 5_000, 2_000
    af = rng.beta(0.3, 1.0, nv)[:, None]
    h1 = (rng.random((nv, ns)) < af).astype(np.uint8)
    h2 = (rng.random((nv, ns)) < af).astype(np.uint8)
    pos = np.arange(1, nv + 1, dtype=np.int64) * 37
    t0 = time.perf_counter()
    path = sr.write_vcf(
        tmp_path / "big.vcf.gz", chrom=np.array(["22"] * nv), pos=pos, ref=["A"] * nv,
        alt=["G"] * nv, variant_id=[f"22:{p}:A:G" for p in pos],
        sample_ids=[f"S{i}" for i in range(ns)], hap1=h1, hap2=h2,
    )
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"write_vcf took {elapsed:.1f} s for 10M genotypes"
    last = subprocess.run([tools["tabix"], str(path), f"22:{pos[-1]}-{pos[-1]}"], capture_output=True, text=True, check=True).stdout
    fields = last.rstrip("\n").split("\t")
    assert fields[2] == f"22:{pos[-1]}:A:G"
    assert fields[9:] == [f"{a}|{b}" for a, b in zip(h1[-1], h2[-1])]


# --------------------------------------------------------------------------------------------
# report


def _privacy_rows(passing: bool) -> list[dict]:
    return [
        {"name": "AATS", "value": 0.51 if passing else 0.31, "threshold": "0.50 ± 0.05", "pass": passing,
         "detail": "nearest-neighbour adversarial accuracy"},
        {"name": "exact copies", "value": 0 if passing else 3, "threshold": "0", "pass": passing, "detail": ""},
        {"name": "max KING kinship", "value": 0.021, "threshold": "≤ 0.0442", "pass": True},
        {"name": "MIA AUC", "value": 0.52 if passing else 0.71, "threshold": "≤ 0.60", "pass": passing},
        {"name": "canaries", "value": "0/20 exposed" if passing else "4/20 exposed", "threshold": "0 exposed",
         "pass": passing},
    ]


def _utility_rows() -> list[dict]:
    return [
        {"name": "allele frequency correlation", "value": 0.995, "target": "≥ 0.99", "pass": True},
        {"name": "LD decay error", "value": 0.0123, "target": "≤ 0.02", "pass": True},
        {"name": "Fst preservation", "value": 0.81, "target": "≥ 0.9", "pass": False},
    ]


EVIL = "<script>alert('x')</script> & \"quotes\""


def _report(verdict: str) -> dict:
    released = verdict == "released"
    return {
        "title": "Synthetic release: chr22 <test>",
        "verdict": verdict,
        "reasons": [] if released else ["AATS 0.31 is outside 0.50 ± 0.05", f"reason with {EVIL}"],
        "created": "2026-01-02T03:04:05+00:00",
        "generator": {
            "name": "haplotype-markov", "order": 4, "epsilon": 1.0, "delta": 1e-6,
            "mechanism": "gaussian", "populations": {"EUR": 40, "AFR": 35}, "n_synthetic": 2000,
            "n_variants": 25000,
        },
        "privacy": _privacy_rows(released),
        "utility": _utility_rows(),
        "per_node": {"node-a": {"samples": 503, "AATS": 0.5}, f"node {EVIL}": {"samples": 400, "MIA AUC": 0.55}},
        "provenance": {"genofed": "0.1.0", "seed": 42, EVIL: "key escaped too", "inputs": ["a.vcf.gz", "b.vcf.gz"]},
    }


def _figures(rng, n_af: int = 300) -> dict:
    af = rng.beta(0.5, 2, n_af)
    scores = np.vstack([rng.normal([0, 0], 1, (60, 2)), rng.normal([5, 1], 0.7, (50, 2)), rng.normal([1, 6], 1.2, (40, 2))])
    return {
        "af": {"real": af, "synthetic": np.clip(af + rng.normal(0, 0.02, n_af), 0, 1)},
        "ld": {"bins_bp": np.arange(0, 110_000, 10_000), "real": np.linspace(0.6, 0.1, 10), "synthetic": np.linspace(0.55, 0.12, 10)},
        "pca": {
            "synthetic": {"scores": scores, "labels": ["EUR"] * 60 + ["AFR"] * 50 + ["EAS"] * 40},
            "real": {
                "EUR": {"mean": [0, 0], "cov": [[1, 0.2], [0.2, 1]], "n": 503},
                "AFR": {"mean": [5, 1], "cov": [[0.5, 0], [0, 0.5]], "n": 661},
                "SAS": {"mean": [-3, 3], "cov": [[0.8, -0.3], [-0.3, 0.6]], "n": 489},
            },
        },
    }


class _Parsed(HTMLParser):
    """Tables by id (rows of cell texts; tables without id as anon0, anon1, ...), the verdict
    element, the reasons list, images and every tag with its attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.row_pass: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.verdict: dict = {}
        self.verdict_text = ""
        self.reasons: list[str] = []
        self._tables: list[str] = []
        self._cells: list[list[str]] = []
        self._anon = 0
        self._in_verdict = False
        self._li: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            name = a.get("id")
            if not name:
                name, self._anon = f"anon{self._anon}", self._anon + 1
            self._tables.append(name)
            self.tables[name], self.row_pass[name] = [], []
        elif tag == "tr":
            self.tables[self._tables[-1]].append([])
            self.row_pass[self._tables[-1]].append(a.get("data-pass", ""))
        elif tag in ("td", "th"):
            self._cells.append([])
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "li":
            self._li = []
        if a.get("id") == "verdict":
            self.verdict, self._in_verdict = a, True

    def handle_endtag(self, tag):
        if tag == "table":
            self._tables.pop()
        elif tag in ("td", "th"):
            self.tables[self._tables[-1]][-1].append("".join(self._cells.pop()).strip())
        elif tag == "p":
            self._in_verdict = False
        elif tag == "li" and self._li is not None:
            self.reasons.append("".join(self._li))
            self._li = None

    def handle_data(self, data):
        if self._cells:
            self._cells[-1].append(data)
        if self._in_verdict:
            self.verdict_text += data
        if self._li is not None:
            self._li.append(data)


def _parse(path: Path) -> _Parsed:
    p = _Parsed()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def _check_images(srcs: list[str]) -> None:
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        assert data[-8:-4] == b"IEND"


def _check_metric_rows(parsed: _Parsed, table: str, rows: list[dict], bound: str) -> None:
    got = parsed.tables[table]
    assert got[0][:4] == ["Metric", "Value", bound.capitalize(), "Result"]
    body = got[1:]
    assert len(body) == len(rows)
    for cells, row, klass in zip(body, rows, parsed.row_pass[table][1:]):
        assert cells[0] == row["name"]
        assert cells[1] == sr._fmt(row["value"])
        assert cells[2] == row[bound]
        assert cells[3] == ("PASS" if row["pass"] else "FAIL")
        assert klass == ("pass" if row["pass"] else "fail")


def test_report_html_released(tmp_path):
    rng = np.random.default_rng(1)
    report = _report("released")
    path = sr.write_report(tmp_path / "rel" / "report.html", report, _figures(rng, n_af=6_000))
    assert os.listdir(path.parent) == ["report.html"]
    p = _parse(path)
    assert p.verdict["data-verdict"] == "released" and "verdict-released" in p.verdict["class"]
    assert p.verdict_text.strip() == "RELEASED"
    _check_metric_rows(p, "privacy", report["privacy"], "threshold")
    _check_metric_rows(p, "utility", report["utility"], "target")
    # literal formatting of some values, so the formatter cannot drift silently
    values = {r[0]: r[1] for r in p.tables["privacy"][1:]}
    assert values == {"AATS": "0.51", "exact copies": "0", "max KING kinship": "0.021", "MIA AUC": "0.52",
                      "canaries": "0/20 exposed"}
    assert p.tables["utility"][1][1] == "0.995"
    gen = {r[0]: r[1] for r in p.tables["generator"]}
    assert gen["epsilon"] == "1" and gen["delta"] == "1e-06" and gen["n_synthetic"] == "2,000"
    assert gen["mechanism"] == "gaussian" and gen["order"] == "4"
    assert [["EUR", "40"], ["AFR", "35"]] in p.tables.values()  # populations, a nested table
    # privacy, af, ld, pca
    assert len(p.images) == 4
    _check_images(p.images)
    assert [a["id"] for t, a in p.tags if t == "figure"] == ["fig-privacy", "fig-af", "fig-ld", "fig-pca"]
    assert not any(r.startswith("reason") for r in p.reasons)
    assert not any(t in ("script", "link", "iframe", "object") for t, _ in p.tags)


def test_report_html_refused_escapes(tmp_path):
    rng = np.random.default_rng(2)
    report = _report("refused")
    figs = _figures(rng)
    path = sr.write_report(tmp_path / "refused.html", report, {"af": figs["af"]})
    text = path.read_text(encoding="utf-8")
    p = _parse(path)
    assert p.verdict["data-verdict"] == "refused" and p.verdict_text.strip() == "REFUSED"
    assert p.reasons == report["reasons"]  # the text survives, as text
    _check_metric_rows(p, "privacy", report["privacy"], "threshold")
    assert {r[0]: r[3] for r in p.tables["privacy"][1:]}["AATS"] == "FAIL"
    # no markup from the dict got through: no <script> element, only escaped text
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    assert not any(t == "script" for t, _ in p.tags)
    assert "<title>Synthetic release: chr22 &lt;test&gt;</title>" in text
    nodes = [r[0] for r in p.tables["per_node"][1:]]
    assert nodes == ["node-a", f"node {EVIL}"]
    assert p.tables["per_node"][0] == ["Node", "samples", "AATS", "MIA AUC"]
    assert p.tables["per_node"][2] == [f"node {EVIL}", "400", "—", "0.55"]
    assert [r[0] for r in p.tables["provenance"]] == ["genofed", "seed", EVIL, "inputs"]
    # privacy (built from the report) and af only
    assert len(p.images) == 2
    _check_images(p.images)
    # nothing is fetched from anywhere
    for _, attrs in p.tags:
        for name in ("src", "href"):
            assert not re.match(r"(?i)(https?:)?//", attrs.get(name) or ""), attrs


def test_report_without_figures(tmp_path):
    report = _report("released")
    path = sr.write_report(tmp_path / "r.html", report, {"privacy": False})
    assert _parse(path).images == []
    report["privacy"] = [r for r in report["privacy"] if r["name"] == "canaries"]  # nothing numeric
    assert _parse(sr.write_report(tmp_path / "r2.html", report)).images == []


def _pdf_pages(path: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-z])", path.read_bytes()))


def test_report_pdf(tmp_path):
    rng = np.random.default_rng(3)
    path = sr.write_report(tmp_path / "report.pdf", _report("released"), _figures(rng))
    assert path.read_bytes().startswith(b"%PDF-")
    assert _pdf_pages(path) == 1 + 4  # a text page, then privacy, af, ld, pca
    assert os.listdir(tmp_path) == ["report.pdf"]

    long = _report("refused")
    long["provenance"] = {f"input_{i:03d}": f"node-{i % 3}/batch-{i}.vcf.gz" for i in range(150)}
    path2 = sr.write_report(tmp_path / "long.pdf", long, {"ld": _figures(rng)["ld"]}, format="pdf")
    lines = sr._text_lines(long)
    assert len(lines) > 150
    text_pages = sr._paginate(lines)
    assert len(text_pages) >= 2 and [line for page in text_pages for line in page] == lines
    assert _pdf_pages(path2) == len(text_pages) + 2  # + privacy, ld


def test_report_errors_leave_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    good = _report("released")
    with pytest.raises(ValueError, match="'released' or 'refused'"):
        sr.write_report(tmp_path / "a.html", {**good, "verdict": "maybe"})
    with pytest.raises(ValueError, match="unknown figure.*'manhattan'"):
        sr.write_report(tmp_path / "a.html", good, {"manhattan": {}})
    with pytest.raises(ValueError, match=r"format='pdf' needs a path ending in \.pdf"):
        sr.write_report(tmp_path / "a.html", good, format="pdf")
    with pytest.raises(ValueError, match=r"\.html or \.pdf"):
        sr.write_report(tmp_path / "a.txt", good)
    bad = _figures(rng)
    bad["af"]["synthetic"] = bad["af"]["synthetic"][:-1]
    with pytest.raises(ValueError, match="plot_af: real has 300 values but synthetic has 299"):
        sr.write_report(tmp_path / "a.html", good, bad)

    def fail(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(sr.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        sr.write_report(tmp_path / "a.pdf", good)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# the plots on their own


def test_plot_af_scatter_and_hexbin():
    rng = np.random.default_rng(5)
    x = rng.random(400)
    y = np.clip(x + rng.normal(0, 0.05, 400), 0, 1)
    y[7] = np.nan
    fig = sr.plot_af(x, y)
    ax = fig.axes[0]
    assert [c.get_gid() for c in ax.collections] == ["af-scatter"]
    assert len(ax.collections[0].get_offsets()) == 399
    keep = ~np.isnan(y)
    r = np.corrcoef(x[keep], y[keep])[0, 1]
    assert f"r = {r:.4f}" in ax.get_title()
    identity = [line for line in ax.lines if line.get_gid() == "af-identity"][0]
    assert list(identity.get_xdata()) == [0, 1] and list(identity.get_ydata()) == [0, 1]

    big = rng.random(5_001)
    fig = sr.plot_af(big, big)
    assert [c.get_gid() for c in fig.axes[0].collections] == ["af-hexbin"]
    assert "r = 1.0000" in fig.axes[0].get_title()


def test_plot_ld_midpoints_in_kb():
    fig = sr.plot_ld([0, 2000, 6000], [0.5, 0.2], [0.4, np.nan])
    ax = fig.axes[0]
    real = [line for line in ax.lines if line.get_gid() == "ld-real"][0]
    assert list(real.get_xdata()) == [1.0, 4.0]
    assert ax.get_xlabel() == "distance (kb)"
    with pytest.raises(ValueError, match="give 3 edges"):
        sr.plot_ld([0, 1, 2, 3, 4], [0.5, 0.2], [0.4, 0.1])


def test_plot_pca_ellipses_from_summaries_only():
    rng = np.random.default_rng(6)
    figs = _figures(rng)
    pca = figs["pca"]
    fig = sr.plot_pca(pca["synthetic"]["scores"], pca["synthetic"]["labels"], pca["real"])
    ax = fig.axes[0]
    pts = sum(len(c.get_offsets()) for c in ax.collections if c.get_gid() == "pca-synthetic")
    assert pts == 150  # the synthetic individuals, and nothing else as points
    ells = [p for p in ax.patches if p.get_gid() == "pca-real-ellipse"]
    assert len(ells) == 3
    # AFR: isotropic cov 0.5 -> 95% diameter 2 * sqrt(chi2_2(0.95) * 0.5)
    afr = [e for e in ells if tuple(e.center) == (5.0, 1.0)][0]
    d = 2 * math.sqrt(-2 * math.log(0.05) * 0.5)
    assert afr.width == pytest.approx(d) and afr.height == pytest.approx(d)
    # colours shared between a population's points and its ellipse
    eur_pts = [c for c in ax.collections if c.get_label().startswith("EUR synthetic")][0]
    eur_ell = [e for e in ells if tuple(e.center) == (0.0, 0.0)][0]
    assert np.allclose(eur_pts.get_facecolor()[0][:3], eur_ell.get_edgecolor()[:3])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "EUR synthetic (n = 60)" in labels and "SAS real, 95%, n = 489" in labels
    # an elongated, rotated covariance: axes are the eigenvalues
    fig = sr.plot_pca(np.zeros((1, 2)), ["A"], {"A": {"mean": [0, 0], "cov": [[4, 0], [0, 1]], "n": 10}})
    e = [p for p in fig.axes[0].patches if p.get_gid() == "pca-real-ellipse"][0]
    assert e.width == pytest.approx(2 * math.sqrt(-2 * math.log(0.05) * 4))
    assert e.height == pytest.approx(2 * math.sqrt(-2 * math.log(0.05) * 1))


def test_plot_privacy_panels_and_colours():
    rows = _privacy_rows(passing=False)
    fig = sr.plot_privacy(rows)
    assert len(fig.axes) == 4  # canaries is not numeric
    red, green = to_rgba(sr._FAIL_COLOUR), to_rgba(sr._PASS_COLOUR)
    for ax, row in zip(fig.axes, [r for r in rows if r["name"] != "canaries"]):
        value = [line for line in ax.lines if line.get_gid() == "privacy-value"][0]
        assert list(value.get_xdata()) == [row["value"]]
        assert to_rgba(value.get_color()) == (green if row["pass"] else red)
        assert ax.get_title(loc="left").startswith(row["name"])
    # AATS band 0.45..0.55 shaded
    band = [p for p in fig.axes[0].patches if p.get_gid() == "privacy-band"][0]
    xs = band.get_patch_transform().transform(band.get_path().vertices)[:, 0]
    assert min(xs) == pytest.approx(0.45) and max(xs) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="no privacy metric has a numeric value"):
        sr.plot_privacy([{"name": "canaries", "value": "0/20"}])


@pytest.mark.parametrize(
    ("text", "band"),
    [
        ("0.50 ± 0.05", (0.45, 0.55)),
        ("0.5 +/- 0.1", (0.4, 0.6)),
        ("≤ 0.0442", (-math.inf, 0.0442)),
        ("< 0.6", (-math.inf, 0.6)),
        ("≥ 0.99", (0.99, math.inf)),
        ("0.4–0.6", (0.4, 0.6)),
        ("0", (0.0, 0.0)),
        ("0 exposed", None),
        ("n/a", None),
        (0.6, None),
    ],
)
def test_threshold_band(text, band):
    got = sr.threshold_band(text)
    if band is None:
        assert got is None
    else:
        assert got == pytest.approx(band)
