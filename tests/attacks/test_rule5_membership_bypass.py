"""Attack: getting around the membership-inference gate (disclosure rule 5: per-variant genomic
releases, whatever the phrasing, are charged to a per-person membership budget; slicing cohorts
or choosing rare variants must not reset or fool it).

The red team's finding (four classes), each attacked here in several phrasings of our own, under
combine modes plain, mpc and he (and an epsilon where the node allows it), each attack as a
fresh researcher (the membership state accumulates per researcher):

(a) per-variant statistics not recognised as such: a group key laundered through an expression
    (``variant_id || ''``, ``concat``, ``upper``, ``chrom || ':' || pos``, ``pos``), genotype
    counts (``COUNT(CASE WHEN dosage = 1 ...)``, ``SUM(CASE WHEN dosage > 0 ...)``), ``avg``,
    ``var_samp``, a CTE or subquery that renames the variant column, and a pivot with one
    ``SUM(CASE WHEN variant_id = .. THEN dosage END)`` column per variant (no group at all);
(b) cohort slicing: "everyone but a few people" again and again, by age windows (disjoint and
    overlapping), by population lists, and with the statistic spelled differently each time;
(c) rare variants: the node's score of a release of the cohort's rarest alleles against the
    power we measure ourselves (``membership_power`` on the real genotypes: members, held-out
    non-members and a reference from the same 1000 Genomes data);
(d) a beacon over a target's five rarest alleles: allele_count, sum(dosage), carriers
    (count WHERE dosage > 0), avg, one query per allele or one grouped by variant.

Each attack must end refused (``membership_risk`` / ``beacon_risk``, or a construct the engine
does not run) or answered with nothing that tells members from non-members. With the gate off
(``[risk] max_membership_power = 1.0, beacon_cap = 1.0``) the same attacks are shown to work,
measured on the real genotypes (``pooled1126``), so the defended assertions can fail.

Outcome at the time of writing: (a) the CTE/subquery renaming and the pivot released every
autosome's statistics charged as one variant; fixed in connectors/gates.py (variant lineage
through CTEs and subqueries; a value conditioned on a variant column is charged every selected
variant); (b) slicing with the statistic spelled differently each time (each spelling was a
separate statistic for the set audit, so its atoms never met and every slice was a fresh
cohort): fixed in privacy/setaudit.py (every aggregate of genotype values alone is one
statistic). Strict xfails, open: (c) the rarest alleles of a cohort are scored at about their analytic
power (the node's simulation draws the reference at the cohort's own frequencies, where rare
alleles carry little signal) while the attack measured on the real genotypes detects about half
the members at zero false positives; (d) carrier counts (``WHERE dosage > 0``) are beacon questions
and refused, but allele_count, sum, avg, genotype counts and allele_freq of the target's singletons
are frequency releases charged one variant each at analytic power: all answered, 1 for the
member, 0 for the non-member. Seen on the way (rule 2, gate off): ``GROUP BY variant_id || ''``
releases cells of a single carrier that the plain key withholds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import LocalFederation, clone_federation, set_node_section
from rule5_ref import cells_withheld

import genofed
from genofed.connectors.federation import add_researcher
from genofed.engine.errors import DisclosureError, GenofedError, UnsupportedError
from genofed.privacy.reid import analytic_power, membership_power

pytestmark = pytest.mark.realdata

K = 5
MODES = ["plain", "mpc", "he"]
CAP = 0.10
RULES = ("membership_risk", "beacon_risk")
J = "FROM genotypes g JOIN samples s USING (sample_id) JOIN phenotypes p USING (sample_id) "
N_RESEARCHERS = 120


# -- federations, researchers, pooled genotypes -------------------------------------------------------

class Fed:
    """A started federation and a supply of fresh researchers (one per attack)."""

    def __init__(self, root, gate: bool):
        self.root, self.gate = root, gate
        self.tokens = {f"r{i}": add_researcher(root, f"r{i}") for i in range(N_RESEARCHERS)}
        self.lf = LocalFederation(root)
        self._free = iter(self.tokens)
        self._open: list = []

    def researcher(self):
        f = genofed.connect(self.root, timeout=120, token=self.tokens[next(self._free)])
        self._open.append(f)
        return f

    def close(self):
        for f in self._open:
            f.close()
        self.lf.close()


def _federation(fed_dir_1126, tmp_path_factory, gate: bool) -> Fed:
    root = clone_federation(fed_dir_1126, tmp_path_factory.mktemp(f"fed_r5bypass_{gate}"), min_count=K, allow_plain=True)
    if not gate:
        set_node_section(root, "risk", {"max_membership_power": 1.0, "beacon_cap": 1.0})
        set_node_section(root, "policy", {"min_mac": 1}, merge=True)  # rule 5's minimum minor-allele count off too
    set_node_section(root, "dp", {"budget_epsilon": 1000.0, "max_epsilon": 1.0})
    return Fed(root, gate)


@pytest.fixture(scope="module")
def defended(fed_dir_1126, tmp_path_factory):
    f = _federation(fed_dir_1126, tmp_path_factory, True)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def gate_off(fed_dir_1126, tmp_path_factory):
    f = _federation(fed_dir_1126, tmp_path_factory, False)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def people(pooled1126, data_1126) -> pd.DataFrame:
    """sample_id -> population, age, node (the suggested split)."""
    split = pd.read_csv(data_1126["split"], sep="\t")[["sample.id", "node"]].rename(columns={"sample.id": "sample_id"})
    df = pooled1126.sql("SELECT s.sample_id, s.population, p.age FROM samples s JOIN phenotypes p USING (sample_id)").df()
    return df.merge(split, on="sample_id").set_index("sample_id").sort_index()


def dosages(pooled, variants: list[str], samples: list[str]) -> np.ndarray:
    """Samples x variants dosages from the pooled oracle (NaN: missing)."""
    pooled.register("_r5v", pd.DataFrame({"variant_id": variants, "j": range(len(variants))}))
    df = pooled.sql("SELECT g.sample_id, v.j, g.dosage FROM genotypes g JOIN _r5v v USING (variant_id)").df()
    row = {s: i for i, s in enumerate(samples)}
    df = df[df["sample_id"].isin(row)]
    out = np.full((len(samples), len(variants)), np.nan)
    out[df["sample_id"].map(row).to_numpy(np.int64), df["j"].to_numpy(np.int64)] = df["dosage"].to_numpy(float, na_value=np.nan)
    return out


def ask(f, sql: str, mode: str, epsilon: float | None = None):
    """``("refused", rule)`` or ``("answered", DataFrame)``; a construct the engine does not run is
    ``("refused", "unsupported")``."""
    try:
        res = f.sql(sql, combine=mode, epsilon=epsilon)
    except DisclosureError as e:
        assert e.rule is not None, e
        return "refused", e.rule
    except UnsupportedError:
        return "refused", "unsupported"
    except GenofedError as e:  # the node refused the fragment as a construct it does not run
        if getattr(e, "rule", None) in RULES:
            return "refused", e.rule
        if "unsupported" in str(e) or "cannot be computed" in str(e) or "keeps sample_id" in str(e):
            return "refused", "unsupported"
        raise
    return "answered", res.to_pandas()


def attack_power(members: np.ndarray, p_pool: np.ndarray, reference: np.ndarray, non_members: np.ndarray) -> float:
    """The Homer/Sankararaman LR test at FPR 0.001 on real genotypes (threshold from the held-out
    non-members, the normal approximation when they are too few for the tail)."""
    p_ref = np.nanmean(reference, axis=0) / 2
    keep = np.isfinite(p_pool) & np.isfinite(p_ref) & ~(((p_ref == 0) & (p_pool == 0)) | ((p_ref == 1) & (p_pool == 1)))
    est = membership_power(members[:, keep], p_pool[keep], p_ref[keep], non_members=non_members[:, keep], fpr=0.001,
                           n_pool=len(members))
    return float(est.power)


# -- (a) per-variant statistics however phrased -------------------------------------------------------

A_WHERE = "s.population = 'GBR' AND g.chrom IN ('1', '2')"  # 2,240 sites of 91 people (30 a node)
PHRASINGS = {  # name -> (SQL, how the answer decodes to an ALT frequency: fn(row value, n GBR people))
    "concat_pipe": f"SELECT g.variant_id || '' AS v, sum(g.dosage) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "concat_fn_avg": f"SELECT concat(g.variant_id, '') AS v, avg(g.dosage) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "upper_key": f"SELECT upper(g.variant_id) AS v, allele_freq(g.dosage) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "pos_key": f"SELECT g.pos AS v, sum(g.dosage) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "chrom_pos_key": f"SELECT g.chrom || ':' || g.pos AS v, sum(g.dosage) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "count_het": f"SELECT g.variant_id AS v, count(CASE WHEN g.dosage = 1 THEN 1 END) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "sum_carrier_case": f"SELECT g.variant_id AS v, sum(CASE WHEN g.dosage > 0 THEN 1 ELSE 0 END) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "var_samp": f"SELECT g.variant_id AS v, var_samp(g.dosage) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "genotype_counts": f"SELECT g.variant_id AS v, g.dosage AS d, count(*) AS x {J}WHERE {A_WHERE} GROUP BY 1, 2",
    "count_filter_hom": f"SELECT g.variant_id AS v, count(*) FILTER (WHERE g.dosage = 2) AS x {J}WHERE {A_WHERE} GROUP BY 1",
    "cte_rename": ("WITH d AS (SELECT g.sample_id, g.variant_id AS x1, g.dosage AS y FROM genotypes g JOIN samples s USING (sample_id) "
                   f"WHERE {A_WHERE}) SELECT x1 AS v, sum(y) AS x FROM d GROUP BY 1"),
    "cte_key_expr": ("WITH d AS (SELECT g.sample_id, g.variant_id || '' AS x1, CASE WHEN g.dosage > 0 THEN 1 ELSE 0 END AS y "
                     f"FROM genotypes g JOIN samples s USING (sample_id) WHERE {A_WHERE}) SELECT x1 AS v, avg(y) AS x FROM d GROUP BY 1"),
    "subquery_rename": ("SELECT x1 AS v, sum(y) AS x FROM (SELECT g.sample_id, g.pos AS x1, g.dosage AS y FROM genotypes g "
                        f"JOIN samples s USING (sample_id) WHERE {A_WHERE}) t GROUP BY 1"),
    "cte_per_variant_sums": ("WITH d AS (SELECT g.variant_id AS v, sum(g.dosage) AS s FROM genotypes g JOIN samples s USING (sample_id) "
                             f"WHERE {A_WHERE} GROUP BY 1) SELECT v, s AS x FROM d"),
}


@pytest.fixture(scope="module")
def pivot_variants(pooled1126) -> list[str]:
    return [r[0] for r in pooled1126.sql(
        "SELECT variant_id FROM genotypes JOIN samples USING (sample_id) WHERE chrom = '3' AND population = 'GBR' "
        "GROUP BY 1 HAVING avg(dosage) BETWEEN 0.3 AND 1.7 ORDER BY variant_id LIMIT 150").fetchall()]


def pivot_sql(variants: list[str], restricted: bool) -> str:
    cols = ", ".join(f"sum(CASE WHEN g.variant_id = '{v}' THEN g.dosage END) AS c{i}" for i, v in enumerate(variants))
    where = "s.population = 'GBR'" + (" AND g.variant_id IN (" + ", ".join(f"'{v}'" for v in variants) + ")" if restricted else
                                      " AND g.chrom = '3'")
    return f"SELECT {cols} {J}WHERE {where}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("phrasing", list(PHRASINGS))
def test_frequency_phrasings_are_charged(defended, phrasing, mode):
    """Every phrasing of GBR's per-variant statistics over chromosomes 1-2 (2,240 sites, far above
    what 30 or 91 people's budget allows) is refused by the membership gate, or not run at all."""
    outcome = ask(defended.researcher(), PHRASINGS[phrasing], mode)
    assert outcome[0] == "refused" and outcome[1] in (*RULES, "unsupported"), (
        f"LEAK ({mode}): {phrasing} answered {len(outcome[1])} per-variant rows of GBR (membership gate not charged)")


@pytest.mark.parametrize("phrasing", ["concat_pipe", "count_het", "cte_rename"])
def test_frequency_phrasings_with_epsilon(defended, phrasing):
    """With an epsilon the release is noisy, but still per-variant: charged and refused."""
    outcome = ask(defended.researcher(), PHRASINGS[phrasing], "mpc", epsilon=1.0)
    assert outcome[0] == "refused", f"LEAK (mpc, epsilon 1): {phrasing} answered"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("restricted", [True, False], ids=["where_in", "whole_chromosome"])
def test_pivot_one_column_per_variant(defended, pivot_variants, mode, restricted):
    """150 columns SUM(CASE WHEN variant_id = .. THEN dosage END): per-variant allele counts of
    GBR without any group key (was charged as one variant)."""
    outcome = ask(defended.researcher(), pivot_sql(pivot_variants, restricted), mode)
    assert outcome == ("refused", "membership_risk"), f"LEAK ({mode}): the pivot was answered"


@pytest.mark.parametrize("mode", ["plain", "mpc"])
def test_frequency_attack_works_without_gate(gate_off, pooled1126, people, pivot_variants, mode):
    """Gate off: the laundered key and the CTE renaming are answered, and the LR test detects GBR members (held-out CEU as non-members and reference); the pivot is answered with
    GBR's allele counts."""
    f = gate_off.researcher()
    every = "g.chrom <> 'X'"  # every autosome, as the red team asked (a reference of 50 CEU needs that many sites)
    a = ask(f, PHRASINGS["concat_pipe"].replace("g.chrom IN ('1', '2')", every), mode)
    b = ask(f, PHRASINGS["cte_rename"].replace("g.chrom IN ('1', '2')", every), mode)
    assert a[0] == b[0] == "answered"
    got = a[1].set_index("v")["x"].astype(float)
    assert len(b[1]) > 100  # (rule 2 withholds more of its cells, at the nodes, than of the laundered key's)
    gbr = sorted(people.index[people["population"] == "GBR"])
    ceu = sorted(people.index[people["population"] == "CEU"])
    variants = list(got.index)
    members = dosages(pooled1126, variants, gbr)
    p_pool = got.to_numpy() / (2 * np.isfinite(members).sum(axis=0))
    ref_nm = dosages(pooled1126, variants, ceu)
    power = attack_power(members, p_pool, ref_nm[:50], ref_nm[50:])
    assert power > 0.5, f"the attack should work with the gate off (power {power})"
    piv = ask(f, pivot_sql(pivot_variants, True), mode)
    assert piv[0] == "answered"
    truth = np.nansum(dosages(pooled1126, pivot_variants, gbr), axis=0)
    assert np.array_equal(piv[1].iloc[0].to_numpy(float), truth)


# -- (b) cohort slicing -------------------------------------------------------------------------------

B_REGION = "g.chrom = '4' AND g.pos < 120000000"  # about 600 sites: within one node's budget, not a small group's


def _b_region_size(pooled) -> int:
    return int(pooled.sql(f"SELECT count(*) FROM variants g WHERE {B_REGION}").fetchall()[0][0])


POPS = ["ACB", "ASW", "CEU", "CHB", "CLM", "GBR", "GIH", "JPT", "LWK", "MXL", "PUR", "YRI"]
SLICES = {  # name -> list of WHERE predicates, each "everyone but a few people"
    "age_disjoint": [f"p.age NOT BETWEEN {a} AND {a + 1}" for a in range(20, 44, 2)],
    "age_overlapping": [f"p.age NOT BETWEEN {a} AND {a + 2}" for a in range(30, 42)],
    "population_lists": ["s.population IN (" + ", ".join(f"'{q}'" for q in POPS if q != p) + ")" for p in POPS],
    "bmi_and_smoker": [f"NOT (p.bmi BETWEEN {b} AND {b + 0.5} AND p.smoker = 1)" for b in np.arange(22, 28, 0.5)],
}
SPELLINGS = ["allele_count(g.dosage)", "sum(g.dosage)", "sum(g.dosage * 1)", "sum(1 * g.dosage)", "sum(g.dosage + 0)",
             "sum(CAST(g.dosage AS DOUBLE))", "sum(g.dosage * 2)", "sum(0 + g.dosage)", "sum(g.dosage - 0)", "sum(g.dosage / 1)"]


def _slices(f, predicates: list[str], aggs, mode: str) -> list:
    return [ask(f, f"SELECT g.variant_id, {agg} AS x {J}WHERE {B_REGION} AND {pred} GROUP BY 1", mode)[0]
            for pred, agg in zip(predicates, aggs, strict=False)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scenario", list(SLICES))
def test_slices_share_one_budget(defended, scenario, mode):
    """The same statistic over many "everyone but a few" slices: only the first is answered,
    every later slice charges its few people as a cohort of their own and is refused."""
    outcomes = _slices(defended.researcher(), SLICES[scenario], itertools.repeat("allele_count(g.dosage)"), mode)
    assert outcomes[0] == "answered"
    assert outcomes[1:].count("answered") == 0, f"LEAK ({mode}): {scenario}: slices answered: {outcomes}"


@pytest.mark.parametrize("mode", MODES)
def test_slices_with_the_statistic_spelled_differently(defended, mode):
    outcomes = _slices(defended.researcher(), SLICES["age_disjoint"], SPELLINGS, mode)
    assert outcomes[1:].count("answered") == 0, f"LEAK ({mode}): slices answered: {outcomes}"


def test_slicing_attack_works_without_gate(gate_off, pooled1126, people):
    """Gate off: everyone and everyone-but-ages-20..23 give the excluded group's allele counts by
    difference, exactly (the pooled genotypes), at a power a direct release would be refused for."""
    f = gate_off.researcher()
    q = f"SELECT g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an {J}WHERE {B_REGION} AND {{pred}} GROUP BY 1"
    whole = ask(f, q.format(pred="p.age > 0"), "mpc")
    part = ask(f, q.format(pred="p.age NOT BETWEEN 20 AND 23"), "mpc")
    assert whole[0] == part[0] == "answered"
    w, p = whole[1].set_index("variant_id"), part[1].set_index("variant_id").reindex(whole[1]["variant_id"])
    diff = (w["ac"] - p["ac"]).dropna()
    group = sorted(people.index[people["age"].between(20, 23)])
    truth = pd.Series(np.nansum(dosages(pooled1126, list(diff.index), group), axis=0), index=diff.index)
    assert len(w) == _b_region_size(pooled1126) and len(diff) > 300
    assert (diff == truth).all(), "the difference of two slices is the excluded group's allele counts"
    # a direct release of that group's counts at these sites would be far above the cap
    assert analytic_power(len(diff), len(group), None, 0.001) > 0.3


# -- (c) rare variants --------------------------------------------------------------------------------

C_COHORT = "p.age <= 60"


@pytest.fixture(scope="module")
def rarest(pooled1126) -> list[str]:
    """The cohort's 750 rarest alleles (singletons of the 1126; public frequencies would do)."""
    return [r[0] for r in pooled1126.sql(
        "SELECT variant_id FROM genotypes WHERE chrom <> 'X' GROUP BY 1 HAVING sum(dosage) >= 1 "
        "ORDER BY sum(dosage), variant_id LIMIT 750").fetchall()]


@pytest.fixture(scope="module")
def rarest_passing(pooled1126) -> list[str]:
    """The 750 rarest alleles whose count in the cohort reaches the minimum minor-allele count
    (what an attacker asks once the singletons are withheld)."""
    return [r[0] for r in pooled1126.sql(
        "SELECT g.variant_id FROM genotypes g JOIN phenotypes p USING (sample_id) WHERE g.chrom <> 'X' AND "
        f"{C_COHORT} GROUP BY 1 HAVING sum(g.dosage) >= {K} AND 2 * count(g.dosage) - sum(g.dosage) >= {K} "
        "ORDER BY sum(g.dosage), g.variant_id LIMIT 750").fetchall()]


def _rare_sql(kind: str, variants: list[str]) -> str:
    agg = {"allele_freq": "allele_freq(g.dosage) AS af", "avg": "avg(g.dosage) / 2 AS af",
           "counts": "allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an"}[kind]
    inl = ", ".join(f"'{v}'" for v in variants)
    return f"SELECT g.variant_id, {agg} {J}WHERE {C_COHORT} AND g.variant_id IN ({inl}) GROUP BY 1"


def _measured(pooled1126, people, answer: pd.DataFrame) -> float:
    """Our own attack on what was released: members = the cohort, reference and non-members =
    the people over 60, split in two."""
    a = answer.dropna().set_index("variant_id")  # withheld cells: nothing to attack with
    if not len(a):
        return 0.0
    p_pool = (a["af"] if "af" in a else a["ac"] / a["an"]).to_numpy(float)
    variants = list(a.index)
    cohort = sorted(people.index[people["age"] <= 60])
    rest = sorted(people.index[people["age"] > 60])
    return attack_power(dosages(pooled1126, variants, cohort), p_pool, dosages(pooled1126, variants, rest[1::2]),
                        dosages(pooled1126, variants, rest[::2]))


def test_rare_attack_works_without_gate(gate_off, pooled1126, people, rarest):
    outcome = ask(gate_off.researcher(), _rare_sql("allele_freq", rarest), "mpc")
    assert outcome[0] == "answered"
    power = _measured(pooled1126, people, outcome[1])
    assert power > 0.3, f"the rare-variant attack should work with the gate off (power {power})"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["allele_freq", "avg", "counts"])
@pytest.mark.parametrize("which", ["rarest", "rarest_passing"])
def test_rarest_variants_scored_as_measured(request, defended, pooled1126, people, which, kind, mode):
    """The cohort's 750 rarest alleles (singletons: withheld by the minimum minor-allele count),
    and its 750 rarest that reach that count: refused, or released with a measured power within
    the cap."""
    f = defended.researcher()
    try:
        res = f.sql(_rare_sql(kind, request.getfixturevalue(which)), combine=mode)
    except DisclosureError as e:
        assert e.rule == "membership_risk"
        return
    scored = max((s["power"] for s in (res.provenance.details.get("membership_risk") or {}).values()), default=0.0)
    measured = _measured(pooled1126, people, res.to_pandas())
    assert measured <= CAP + 0.05, f"LEAK ({mode}, {kind}): scored {scored:.3f}, measured {measured:.3f}"


# -- (d) a beacon over a target's rarest alleles ------------------------------------------------------

@pytest.fixture(scope="module")
def targets(pooled1126, people) -> dict[str, list[str]]:
    """A member of the cohort (age <= 60) and a non-member (age > 60), each with their five
    rarest alleles (singletons of the 1126)."""
    rows = pooled1126.sql(
        "WITH ac AS (SELECT variant_id, sum(dosage) AS ac FROM genotypes WHERE chrom <> 'X' GROUP BY 1 HAVING sum(dosage) = 1) "
        "SELECT g.sample_id, list(g.variant_id ORDER BY g.variant_id) AS vs FROM genotypes g JOIN ac USING (variant_id) "
        "WHERE g.dosage > 0 GROUP BY 1 HAVING count(*) >= 5 ORDER BY 1").fetchall()
    member = next(s for s, _ in rows if people.loc[s, "age"] <= 60)
    non_member = next(s for s, _ in rows if people.loc[s, "age"] > 60)
    vs = dict(rows)
    return {"member": vs[member][:5], "non_member": vs[non_member][:5]}


BEACON = {  # name -> one query per allele ({v}) or one for all five ({vs})
    "allele_count": "SELECT allele_count(g.dosage) AS x {J}WHERE {C} AND g.variant_id = '{v}'",
    "sum_dosage": "SELECT sum(g.dosage) AS x {J}WHERE {C} AND g.variant_id = '{v}'",
    "carriers": "SELECT count(*) AS x {J}WHERE {C} AND g.variant_id = '{v}' AND g.dosage > 0",
    "carriers_distinct": "SELECT count(DISTINCT g.sample_id) AS x {J}WHERE {C} AND g.variant_id = '{v}' AND g.dosage >= 1",
    "avg": "SELECT avg(g.dosage) AS x {J}WHERE {C} AND g.variant_id = '{v}'",
    "het_count": "SELECT count(CASE WHEN g.dosage = 1 THEN 1 END) AS x {J}WHERE {C} AND g.variant_id = '{v}'",
    "grouped_counts": "SELECT g.variant_id, allele_count(g.dosage) AS x {J}WHERE {C} AND g.variant_id IN ({vs}) GROUP BY 1",
    "grouped_carriers": "SELECT g.variant_id, count(*) AS x {J}WHERE {C} AND g.dosage > 0 AND g.variant_id IN ({vs}) GROUP BY 1",
    "grouped_freq": "SELECT g.variant_id, allele_freq(g.dosage) AS x {J}WHERE {C} AND g.variant_id IN ({vs}) GROUP BY 1",
}


def _beacon(f, phrasing: str, alleles: list[str], mode: str) -> list:
    """What the researcher observes per allele: a refusal, or the values answered (None: withheld)."""
    q = BEACON[phrasing]
    if "{vs}" in q:
        out = ask(f, q.format(J=J, C=C_COHORT, vs=", ".join(f"'{v}'" for v in alleles)), mode)
        if out[0] == "refused":
            return [out]
        got = dict(zip(out[1]["variant_id"], out[1]["x"], strict=True)) if len(out[1]) else {}
        return [("answered", None if pd.isna(got.get(v)) else float(got[v])) for v in alleles]
    seen = []
    for v in alleles:
        out = ask(f, q.format(J=J, C=C_COHORT, v=v), mode)
        if out[0] == "refused":
            seen.append(out)
            break
        x = out[1]["x"].iloc[0] if len(out[1]) else None
        seen.append(("answered", None if x is None or pd.isna(x) else float(x)))
    return seen


PRESENCE = ["carriers", "carriers_distinct", "grouped_carriers"]  # WHERE dosage > 0: beacon questions, charged
OPEN = [p for p in BEACON if p not in PRESENCE]
BEACON_XFAIL = pytest.mark.xfail(strict=True, reason=(
    "rule 5 open: allele_count / sum(dosage) / avg(dosage) / count(CASE WHEN dosage = 1 ..) / allele_freq of a "
    "cohort over a target's five singleton alleles (one query per allele or one grouped by variant) are per-variant "
    "frequency releases, never charged to the beacon budget; the membership gate charges one variant each at its "
    "analytic power (~0.001), so all ten are answered in every mode: 1 (or 1/2N) for the member's alleles, 0 for the "
    "non-member's (and rule 2 releases the single carrier's count: allele_count's influence is everyone genotyped)"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("phrasing", PRESENCE + OPEN)
def test_beacon_target_rarest_alleles(defended, targets, phrasing, mode):
    """Asked for a member's and a non-member's five rarest alleles (one researcher, the member
    first), the node refuses (beacon or membership budget) before the answers tell them apart."""
    f = defended.researcher()
    seen_m = _beacon(f, phrasing, targets["member"], mode)
    seen_n = _beacon(f, phrasing, targets["non_member"], mode) if seen_m[-1][0] == "answered" else []
    refused = any(o[0] == "refused" for o in seen_m + seen_n)
    if refused:
        rules = {o[1] for o in seen_m + seen_n if o[0] == "refused"}
        assert rules <= {*RULES, "unsupported"}, rules
        assert sum(o[0] == "answered" for o in seen_m) < 5 or not any(o[1] not in (None, 0.0) for o in seen_m), (
            f"LEAK ({mode}): {phrasing}: the member's five alleles were answered non-zero before the refusal: {seen_m}")
        return
    assert [o[1] for o in seen_m] == [o[1] for o in seen_n], (
        f"LEAK ({mode}): {phrasing}: member {seen_m} vs non-member {seen_n} (told apart, never refused)")


@pytest.mark.parametrize("phrasing", ["allele_count", "carriers", "avg", "grouped_counts"])
def test_beacon_attack_works_without_gate(gate_off, targets, phrasing):
    """Gate off: the member's rarest alleles answer differently from the non-member's."""
    f = gate_off.researcher()
    seen_m = _beacon(f, phrasing, targets["member"], "mpc")
    seen_n = _beacon(f, phrasing, targets["non_member"], "mpc")
    assert all(o[0] == "answered" for o in seen_m + seen_n)
    assert [o[1] for o in seen_m] != [o[1] for o in seen_n], (seen_m, seen_n)


# -- ordinary genomic work is not refused -------------------------------------------------------------

SUPER_POP = ("CASE WHEN s.population IN ('ACB', 'ASW', 'LWK', 'YRI') THEN 'AFR' WHEN s.population IN ('CLM', 'MXL', 'PUR') THEN 'AMR' "
             "WHEN s.population IN ('CHB', 'JPT') THEN 'EAS' WHEN s.population IN ('CEU', 'GBR') THEN 'EUR' "
             "WHEN s.population = 'GIH' THEN 'SAS' END")
Q_AF = (f"SELECT {SUPER_POP} AS super_pop, g.variant_id, allele_count(g.dosage) AS ac, allele_number(g.dosage) AS an, "
        "allele_freq(g.dosage) AS af FROM genotypes g JOIN samples s USING (sample_id) "
        "WHERE g.chrom = '22' AND g.pos BETWEEN 16000000 AND 18999999 GROUP BY ALL")


@pytest.mark.parametrize("mode", MODES)
def test_ordinary_frequencies_by_super_population(defended, pooled1126, people, mode):
    """Answered; every released cell exact, and the cells withheld exactly those whose ALT or REF
    count is below the minimum (federation-wide under mpc/he, at some node in plain mode),
    computed from the pooled genotypes."""
    outcome = ask(defended.researcher(), Q_AF, mode)
    assert outcome[0] == "answered", outcome
    got = outcome[1]
    pooled1126.register("_r5_node", people[["node"]].reset_index())
    per_node = pooled1126.sql(
        Q_AF.replace("allele_freq(g.dosage) AS af", "n.node").replace("allele_count(g.dosage)", "sum(g.dosage)")
        .replace("allele_number(g.dosage)", "2 * count(g.dosage)").replace("USING (sample_id)", "USING (sample_id) JOIN _r5_node n USING (sample_id)")).df()
    whole = per_node.groupby(["super_pop", "variant_id"])[["ac", "an"]].sum()
    withheld = cells_withheld(per_node, ["super_pop", "variant_id"], mode, K)
    expect = whole.drop(index=list(withheld))
    assert 0 < len(withheld) < len(whole)
    assert set(zip(got["super_pop"], got["variant_id"], strict=True)) == set(expect.index), f"{mode}: released cells differ from rule 5's"
    g = got.set_index(["super_pop", "variant_id"]).loc[expect.index]
    assert (g["ac"].to_numpy(float) == expect["ac"].to_numpy(float)).all() and (g["an"].to_numpy(float) == expect["an"].to_numpy(float)).all()


@pytest.mark.parametrize("mode", MODES)
def test_ordinary_allele_counts_of_common_variants(defended, pooled1126, mode):
    common = pooled1126.sql("SELECT variant_id, sum(dosage) AS ac FROM genotypes WHERE chrom = '20' GROUP BY 1 "
                            "HAVING avg(dosage) BETWEEN 0.6 AND 1.4 ORDER BY 1 LIMIT 5").fetchall()
    f = defended.researcher()
    for v, ac in common:
        outcome = ask(f, f"SELECT allele_count(g.dosage) AS ac FROM genotypes g WHERE g.variant_id = '{v}'", mode)
        assert outcome[0] == "answered", (v, outcome)
        assert int(outcome[1]["ac"].iloc[0]) == int(ac)
