"""The Hail backend's own machinery: the store conversion is exact (both conversion paths), an
interrupted conversion is never read, Hail starts lazily. Collected only where Hail is installed
(the hail CI environment); the answers themselves are checked by tests/test_backends.py."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from genofed.engine.backends import hail_store
from genofed.engine.backends.hail_session import HailSettings, ensure_session
from genofed.genomics.kernels import genotype_rows
from genofed.genomics.store import NodeStore

SETTINGS = HailSettings(master="local[2]", driver_memory="3g")


@pytest.fixture(scope="module")
def hl():
    return ensure_session(SETTINGS)


@pytest.fixture()
def store(fed_dir_1126, tmp_path):
    """A private copy of one node's store (the conversion writes beside it)."""
    src = NodeStore(fed_dir_1126 / "biobank_C" / "store")
    dst = tmp_path / "store"
    shutil.copytree(src.root, dst, symlinks=True)
    return NodeStore(dst)


def _entries(hl, uri):
    mt = hl.read_matrix_table(f"{uri}/genotypes.mt")
    mt = mt.filter_rows(mt.vidx % 97 == 0)  # a sample of rows over the whole genome
    ent = mt.entries().key_by()
    t = ent.select("vidx", "sample_id", "dosage", "ploidy", "phased").collect()
    return {(r.vidx, r.sample_id): (r.dosage, r.ploidy, r.phased) for r in t}


def _expected(store):
    vidx = np.arange(0, store.manifest.n_variants, 97)
    rows = genotype_rows(store.planes, vidx, store.manifest.n_samples).to_pylist()
    ids = pq.read_table(store.samples_path).column("sample_id").to_pylist()
    return {(r["vidx"], ids[r["sidx"]]): (r["dosage"], r["ploidy"], r["phased"]) for r in rows}


@pytest.mark.parametrize("path", ["vcf", "code_matrix"])
def test_conversion_is_exact(hl, store, monkeypatch, path):
    if path == "code_matrix":  # a store with a call the VCF route cannot write takes the exact code matrix
        def refuse(*a, **k):
            raise hail_store._Unrepresentable

        monkeypatch.setattr(hail_store, "_write_vcf", refuse)
    uri = hail_store.convert(hl, store)
    got, want = _entries(hl, uri), _expected(store)
    assert len(got) == len(want) > 1000
    assert got == want
    assert {v[1] for v in want.values()} >= {1, 2}  # haploid (chrX males) and diploid calls are both in the sample
    mt = hl.read_matrix_table(f"{uri}/genotypes.mt")
    assert mt.count() == (store.manifest.n_variants, store.manifest.n_samples)


def test_interrupted_conversion_is_redone(hl, store, monkeypatch):
    real = hail_store._genotypes

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(hail_store, "_genotypes", crash)
    with pytest.raises(RuntimeError):
        hail_store.convert(hl, store)
    uri = hail_store.cache_uri(store)
    assert not hail_store.is_converted(hl, uri)  # never read: no DONE
    monkeypatch.setattr(hail_store, "_genotypes", real)
    hail_store.convert(hl, store)
    assert hail_store.is_converted(hl, uri)
    assert hl.read_matrix_table(f"{uri}/genotypes.mt").count_rows() == store.manifest.n_variants


def test_data_dir_keeps_the_cache_outside_the_store(hl, store, tmp_path):
    uri = hail_store.convert(hl, store, str(tmp_path / "hail-data"))
    assert uri.startswith(str(tmp_path / "hail-data"))
    assert not (store.path / "hail").exists()
    assert hail_store.is_converted(hl, uri)


def test_node_prepare_converts_ahead_of_the_first_query(hl, store, tmp_path):
    from click.testing import CliRunner

    from genofed.cli import main

    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nname = "big"\nstore = "{store.root}"\nbackend = "hail"\n[hail]\nmaster = "local[2]"\n'
                   '[policy]\nmin_count = 5\n[[researchers]]\nname = "r"\ntoken_sha256 = "' + "0" * 64 + '"\n')
    res = CliRunner().invoke(main, ["node", "prepare", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "big: hail backend ready" in res.output
    assert hail_store.is_converted(hl, hail_store.cache_uri(store))
