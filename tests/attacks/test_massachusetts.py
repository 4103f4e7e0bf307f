"""Attack: the Massachusetts case (Sweeney 1997/2000): ZIP code + birth date + sex single out
most people, so a "de-identified" registry joined to a voter list re-identifies them.

The 1000 Genomes 1126 cohort (three nodes, the suggested split) gets a deterministic synthetic
clinical table ``registry(sample_id, zip, birth_date, diagnosis)``: 15 ZIP codes, birth dates
spread over 60 years, a 0/1 diagnosis. The attacker's voter list is the registry's quasi-
identifiers with the names (sample ids) and without the diagnosis.

(a) min_count = 1: grouping by zip, birth_date, sex releases every unique person's diagnosis;
    joining the released rows to the voter list recovers each of them exactly.
(b) min_count = 5, no quasi-identifier policy: the values are suppressed, but the provenance
    lists the suppressed groups' keys: the attacker learns that the voter with that (zip, birth
    date, sex) is in the biobank (membership), and with the diagnosis as a fourth key, the
    diagnosis too. A COUNT for one person is suppressed where one for nobody is released as 0.
(c) quasi_identifiers = [registry.zip, registry.birth_date, samples.sex]: no released row has
    n < 5, no QI keys are listed as suppressed, and a COUNT for a unique person is withheld
    exactly like one for a combination nobody has.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow.csv as pcsv
import pytest
from conftest import LocalFederation, clone_federation

from genofed.connectors.federation import init_federation
from genofed.connectors.ingest import read_sample_sheet
from genofed.engine.errors import DisclosureError

pytestmark = pytest.mark.realdata

QI = ["registry.zip", "registry.birth_date", "samples.sex"]
ZIPS = ["01002", "01060", "01201", "01370", "01420", "01603", "01701", "01810", "01950", "02108",
        "02138", "02215", "02351", "02540", "02657"]
BY_QI = ("SELECT r.zip, r.birth_date, s.sex, count(*) AS n, avg(r.diagnosis) AS diagnosis "
         "FROM samples s JOIN registry r USING (sample_id) GROUP BY r.zip, r.birth_date, s.sex")
BY_QI_AND_DIAGNOSIS = ("SELECT r.zip, r.birth_date, s.sex, r.diagnosis, count(*) AS n "
                       "FROM samples s JOIN registry r USING (sample_id) GROUP BY ALL")
COUNT_ONE = ("SELECT count(*) AS n FROM samples s JOIN registry r USING (sample_id) "
             "WHERE r.zip = '{zip}' AND r.birth_date = DATE '{birth_date}' AND s.sex = '{sex}'")
BY_ZIP = "SELECT r.zip, count(*) AS n, sum(r.diagnosis) AS cases FROM samples s JOIN registry r USING (sample_id) GROUP BY r.zip"


@pytest.fixture(scope="module")
def truth(tmp_path_factory, data_1126) -> dict:
    """The registry (written as CSV) and the pooled truth: one row per person."""
    sheet = read_sample_sheet(data_1126["samples"])
    ids, sex = sheet.column("sample_id").to_pylist(), sheet.column("sex").to_pylist()
    rng = np.random.default_rng(1997)
    start = dt.date(1935, 1, 1)
    days = rng.integers(0, 60 * 365, len(ids))
    people = [{"sample_id": i, "zip": ZIPS[z], "birth_date": start + dt.timedelta(days=int(d)), "diagnosis": int(x), "sex": s}
              for i, z, d, x, s in zip(ids, rng.integers(0, len(ZIPS), len(ids)), days, rng.random(len(ids)) < 0.3, sex, strict=True)]
    path = tmp_path_factory.mktemp("registry") / "registry.csv"
    with open(path, "w") as f:
        f.write("sample_id,zip,birth_date,diagnosis\n")
        for p in people:
            f.write(f"{p['sample_id']},{p['zip']},{p['birth_date'].isoformat()},{p['diagnosis']}\n")
    qi = {}
    for p in people:
        qi.setdefault((p["zip"], p["birth_date"], p["sex"]), []).append(p)
    unique = {k: v[0] for k, v in qi.items() if len(v) == 1}
    assert len(unique) > 0.9 * len(people), "ZIP + birth date + sex single out most people"
    # the voter list: names and quasi-identifiers, read back from the CSV, no diagnosis
    reg = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"zip": "string"})).to_pylist()
    by_id = dict(zip(ids, sex, strict=True))
    voters = {(r["zip"], r["birth_date"], by_id[r["sample_id"]]): r["sample_id"] for r in reg}
    return {"csv": path, "people": people, "unique": unique, "voters": voters}


@pytest.fixture(scope="module")
def mass_dir(tmp_path_factory, data_1126, truth):
    root = tmp_path_factory.mktemp("mass")
    init_federation(root, data_1126["vcf"], data_1126["samples"], data_1126["split"], clinical={"registry": truth["csv"]},
                    min_count=1, allow_plain=True, combine="plain")
    return root


@pytest.fixture(scope="module", params=["defence_off", "min_count_5", "quasi_identifiers"])
def fed(request, mass_dir, tmp_path_factory):
    policy = {"quasi_identifiers": QI} if request.param == "quasi_identifiers" else {}
    k = 1 if request.param == "defence_off" else 5
    root = clone_federation(mass_dir, tmp_path_factory.mktemp(f"mass_{request.param}"), min_count=k, combine="plain", **policy)
    lf = LocalFederation(root)
    try:
        yield request.param, lf.fed
    finally:
        lf.close()


def _key(r: dict) -> tuple:
    return (r["zip"], r["birth_date"], r["sex"])


def test_grouping_by_zip_birth_date_sex(fed, truth):
    mode, f = fed
    res = f.sql(BY_QI)
    rows = res.to_arrow().to_pylist()
    unique, voters = truth["unique"], truth["voters"]
    if mode == "defence_off":
        # (a) every unique person's diagnosis is released; the voter list names them
        singles = [r for r in rows if r["n"] == 1]
        assert len(singles) == len(unique)
        named = {voters[_key(r)]: r["diagnosis"] for r in singles}
        assert named == {p["sample_id"]: p["diagnosis"] for p in unique.values()}
        return
    assert all(r["n"] >= 5 for r in rows)  # values of small groups are never released
    # (b) and (c): withheld groups are counted, never named: no unique person's quasi-identifiers
    # appear anywhere in what the researcher receives (before rule 3, (b) listed them all)
    assert res.suppressed >= len(unique)
    text = json.dumps(res.provenance.to_dict(), default=str)
    assert not any(z in text for (z, _, _) in unique), "a withheld group's key reached the researcher"


def test_diagnosis_as_a_key(fed, truth):
    mode, f = fed
    if mode == "defence_off":
        pytest.skip("(a) already releases the diagnosis")
    res = f.sql(BY_QI_AND_DIAGNOSIS)
    assert all(r["n"] >= 5 for r in res.to_arrow().to_pylist())
    # the withheld groups' keys (quasi-identifiers and diagnosis) never leave a node
    text = json.dumps(res.provenance.to_dict(), default=str)
    assert not any(z in text for (z, _, _) in truth["unique"]), "a withheld group's key reached the researcher"


def test_count_for_one_person_vs_nobody(fed, truth):
    mode, f = fed
    person = next(iter(truth["unique"].values()))
    nobody = {"zip": "02138", "birth_date": dt.date(1945, 7, 4), "sex": "F"}
    assert (nobody["zip"], nobody["birth_date"], nobody["sex"]) not in truth["voters"]
    one = f.sql(COUNT_ONE.format(**person))
    none = f.sql(COUNT_ONE.format(**nobody))
    if mode == "defence_off":
        assert one.to_arrow().to_pylist() == [{"n": 1}] and none.to_arrow().to_pylist() == [{"n": 0}]
    elif mode == "min_count_5":
        # (b) withheld for the member, released as 0 for nobody: membership disclosed (a WHERE
        # that singles out one person; declared quasi-identifiers (c) close it, see
        # docs/privacy-attacks.md "What the rules cannot stop")
        assert one.to_arrow().num_rows == 0 and one.suppressed == 1
        assert none.to_arrow().to_pylist() == [{"n": 0}] and not none.suppressed
    else:
        # (c) indistinguishable: both withheld the same way
        assert one.to_arrow().equals(none.to_arrow()) and one.to_arrow().num_rows == 0
        assert one.suppressed == none.suppressed == 1


def test_released_groups_are_exact_or_withheld(fed, truth):
    """Groups of about 10 people, split over three nodes: each released count is the pooled one
    (a group some node withheld must not be released as the other nodes' partial sum: nodes send
    blinded keys of the groups they withhold, and the coordinator withholds those everywhere)."""
    mode, f = fed
    res = f.sql("SELECT r.zip, s.sex, r.diagnosis, count(*) AS n FROM samples s JOIN registry r USING (sample_id) GROUP BY ALL")
    expected: dict[tuple, int] = {}
    for p in truth["people"]:
        k = (p["zip"], p["sex"], p["diagnosis"])
        expected[k] = expected.get(k, 0) + 1
    got = {(r["zip"], r["sex"], r["diagnosis"]): r["n"] for r in res.to_arrow().to_pylist()}
    wrong = {k: (n, expected[k]) for k, n in got.items() if n != expected[k]}
    assert not wrong, f"{len(wrong)} groups released with a partial count (released, true): {list(wrong.items())[:3]}"
    if mode == "defence_off":
        assert got == expected


def test_coarse_quasi_identifier_groups_stay_useful(fed, truth):
    """Grouping by ZIP alone (about 75 people each, ~25 per node): every released ZIP is exact.
    The number of cases is a count of cases (rule 2): a ZIP with 1-4 cases at a node is withheld
    as its (zip, diagnosis = 1) cell would be. After the (zip, sex, diagnosis) cells of the test
    above, whose small cells were withheld, the ZIP totals would give those cells away (totals
    minus margins): the audit refuses them, naming that earlier query."""
    mode, f = fed
    expected: dict[str, list[int]] = {}
    for p in truth["people"]:
        e = expected.setdefault(p["zip"], [0, 0])
        e[0] += 1
        e[1] += p["diagnosis"]
    try:
        res = f.sql(BY_ZIP)
    except DisclosureError as e:
        assert mode != "defence_off" and e.rule == "linear_audit" and "zip, s.sex, r.diagnosis" in str(e), str(e)
        return
    rows = {r["zip"]: (r["n"], r["cases"]) for r in res.to_arrow().to_pylist()}
    if mode == "defence_off":
        assert rows == {z: tuple(v) for z, v in expected.items()}
        return
    assert rows and all(rows[z] == tuple(expected[z]) for z in rows)
    assert len(rows) + res.suppressed == len(expected)
