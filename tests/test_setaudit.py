"""The linear audit over person sets (rule 4), on its own: attacks in several shapes, and
ordinary sequences that must pass."""

from __future__ import annotations

import numpy as np
import pytest

from genofed.privacy.setaudit import RULE, AuditConflict, Row, SetAudit, statistics_of

K = 5
N = 400


@pytest.fixture
def audit(tmp_path):
    return SetAudit(tmp_path / "audit.sqlite", N)


def _rows(*sets, direct=True):
    return [Row(np.asarray(sorted(s), np.int64), direct) for s in sets]


def test_with_and_without_one_person(audit):
    everyone = set(range(100))
    audit.check_and_record("r", "q1", {"sum(bmi)": _rows(everyone)}, K)
    with pytest.raises(AuditConflict, match="q1") as e:
        audit.check_and_record("r", "q2", {"sum(bmi)": _rows(everyone - {17})}, K)
    assert e.value.rule == RULE and e.value.conflicts == ["q1"]
    assert "17" not in str(e.value)


def test_with_and_without_a_small_group_in_either_order(audit):
    a = set(range(50))
    audit.check_and_record("r", "q1", {"count": _rows(a - {1, 2, 3})}, K)
    with pytest.raises(AuditConflict):
        audit.check_and_record("r", "q2", {"count": _rows(a)}, K)


def test_total_minus_released_margins(audit):
    cells = [set(range(i * 30, i * 30 + 30)) for i in range(4)]
    small = set(range(120, 123))  # withheld: never recorded
    audit.check_and_record("r", "q1", {"count": _rows(*cells)}, K)
    with pytest.raises(AuditConflict, match="q1"):
        audit.check_and_record("r", "q2", {"count": _rows(set().union(*cells) | small)}, K)


def _code(rng, n_sets: int, n_targets: int, distance: int) -> list[set[int]]:
    """Subsets of the targets, every two at least ``distance`` people apart, whose membership
    matrix (with a column for the common base) has full rank: they determine every target."""
    while True:
        sets: list[set[int]] = []
        while len(sets) < n_sets:
            c = {int(t) for t in np.flatnonzero(rng.random(n_targets) < 0.5)}
            if all(len(c ^ o) >= distance for o in sets):
                sets.append(c)
        m = np.array([[1] + [int(t in c) for t in range(n_targets)] for c in sets])
        if np.linalg.matrix_rank(m) == n_targets + 1:
            return sets


def test_overlapping_sets_solved_by_linear_algebra(audit):
    """Sixteen sets, each at least 5 people from every other (so a pairwise check passes every
    one), that together determine fourteen people's values exactly."""
    codes = _code(np.random.default_rng(3), 16, 14, K)
    base = set(range(200, 260))
    m = np.array([[1] + [int(t in c) for t in range(14)] for c in codes])
    assert np.linalg.matrix_rank(m) == 15  # the attack works on the values
    with pytest.raises(AuditConflict):
        for q, c in enumerate(codes):
            audit.check_and_record("r", f"q{q}", {"sum(income)": _rows(base | c)}, K)


def test_different_statistics_do_not_conflict(audit):
    everyone = set(range(100))
    audit.check_and_record("r", "q1", {"sum(bmi)": _rows(everyone)}, K)
    audit.check_and_record("r", "q2", {"sum(ldl)": _rows(everyone - {17})}, K)


def test_researchers_are_separate(audit):
    everyone = set(range(100))
    audit.check_and_record("alice", "q1", {"count": _rows(everyone)}, K)
    audit.check_and_record("bob", "q2", {"count": _rows(everyone - {17})}, K)


def test_ordinary_sequences_pass(audit):
    pops = [set(range(i * 40, i * 40 + 40)) for i in range(5)]
    sexes = [set(range(0, N, 2)), set(range(1, N, 2))]
    audit.check_and_record("r", "q1", {"count": _rows(*pops)}, K)  # by population
    audit.check_and_record("r", "q2", {"count": _rows(*pops)}, K)  # the same again
    audit.check_and_record("r", "q3", {"count": _rows(set().union(*pops))}, K)  # the total of released cells
    audit.check_and_record("r", "q4", {"count": _rows(*(p & sexes[0] for p in pops), *(p & sexes[1] for p in pops))}, K)
    audit.check_and_record("r", "q5", {"count": _rows(*sexes)}, K)


def test_one_secure_sum_alone_is_not_a_disclosure(audit):
    """Under MPC a node's 3 people in a group are part of a federation-wide sum."""
    audit.check_and_record("r", "q1", {"count": _rows({1, 2, 3}, set(range(10, 60)), direct=False)}, K)
    with pytest.raises(AuditConflict):  # but two secure sums differing by one person at this node
        audit.check_and_record("r", "q2", {"count": _rows(set(range(10, 59)), direct=False)}, K)


def test_state_persists(tmp_path):
    a = SetAudit(tmp_path / "s.sqlite", N)
    a.check_and_record("r", "q1", {"count": _rows(set(range(100)))}, K)
    a.close()
    b = SetAudit(tmp_path / "s.sqlite", N)
    with pytest.raises(AuditConflict):
        b.check_and_record("r", "q2", {"count": _rows(set(range(99)))}, K)


def test_statistics_by_meaning():
    from genofed.engine.fragment import validate_fragment
    from genofed.engine.schema import Catalog

    cat = Catalog.merge({"a": {"tables": {"samples": {"sample_id": "VARCHAR", "pop": "VARCHAR", "bmi": "DOUBLE"}},
                               "variants_digest": "x"}})
    one = validate_fragment("SELECT s.pop AS _k0, COUNT(*) AS _p0, SUM(s.bmi) AS _p1 FROM samples AS s GROUP BY s.pop", cat)
    two = validate_fragment("SELECT x.pop AS _k0, COUNT(DISTINCT x.sample_id) AS _p0, SUM(x.bmi) AS _p1 FROM samples AS x "
                            "GROUP BY x.pop", cat)
    assert statistics_of(one) == statistics_of(two) == ["count", "sum(samples.bmi)"]


def test_a_full_audit_refuses_instead_of_forgetting(audit, monkeypatch):
    """Flooding the audit must not push an old release out of it: with the limit reached, a new
    person set of that statistic is refused (rule audit_capacity), so "with and without one
    person" against the first release is still caught; repeats of known sets, other statistics
    and other researchers are unaffected."""
    from genofed.engine.errors import DisclosureError
    from genofed.privacy import setaudit

    monkeypatch.setattr(setaudit, "MAX_ROWS", 6)
    everyone = set(range(300))
    audit.check_and_record("r", "q0", {"count": _rows(everyone)}, K)
    for i in range(5):  # disjoint blocks of 50: nothing singles anyone out
        audit.check_and_record("r", f"flood{i}", {"count": _rows(set(range(50 * i, 50 * i + 50)))}, K)
    with pytest.raises(DisclosureError) as e:
        audit.check_and_record("r", "attack", {"count": _rows(everyone - {17})}, K)
    assert e.value.rule == setaudit.RULE_CAPACITY and "17" not in str(e.value)
    audit.check_and_record("r", "repeat", {"count": _rows(everyone)}, K)  # a set it already holds
    audit.check_and_record("r", "other", {"sum(bmi)": _rows(everyone - {17})}, K)
    audit.check_and_record("someone_else", "q", {"count": _rows(everyone - {17})}, K)


def test_genotype_values_are_one_statistic_however_spelled():
    """Slices of a cohort asked with a different spelling of its allele counts each time must be
    audited together: every aggregate of genotype values alone is one statistic."""
    from genofed.engine.fragment import validate_fragment
    from genofed.engine.schema import Catalog

    genotypes = {"sample_id": "VARCHAR", "variant_id": "VARCHAR", "chrom": "VARCHAR", "pos": "BIGINT", "ref": "VARCHAR",
                 "alt": "VARCHAR", "dosage": "TINYINT", "phased": "BOOLEAN"}
    cat = Catalog.merge({"a": {"tables": {"samples": {"sample_id": "VARCHAR", "pop": "VARCHAR", "bmi": "DOUBLE"},
                                          "genotypes": genotypes}, "variants_digest": "x"}})
    base = "SELECT s.pop AS _k0, g.variant_id AS _k1, {agg} AS _p0 FROM genotypes AS g JOIN samples AS s ON g.sample_id = s.sample_id " \
           "GROUP BY s.pop, g.variant_id"
    spellings = ["ALLELE_COUNT(g.dosage)", "SUM(g.dosage)", "SUM(g.dosage * 1)", "SUM(g.dosage + 0)",
                 "COUNT(CASE WHEN g.dosage = 1 THEN 1 END)", "HET_COUNT(g.dosage)"]
    stats = {tuple(statistics_of(validate_fragment(base.format(agg=a), cat))) for a in spellings}
    assert stats == {("genotype_values|genotypes",)}
    other = statistics_of(validate_fragment(base.format(agg="SUM(g.dosage * s.bmi)"), cat))
    assert other != ["genotype_values|genotypes"]  # weighted by a clinical value: another statistic
