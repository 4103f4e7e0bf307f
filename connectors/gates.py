"""The node's release gates: the ``execute`` (with an epsilon) and ``disclose`` steps of the
request pipeline (:mod:`genofed.connectors.pipeline`).

One object per node holds what the rules need (the backend, the policy, the privacy state:
person-set audit, membership gate, DP ledger, release log) and applies DESIGN.md's rules 2-6 and
8 to every fragment the same way, whatever its combine mode:

* rule 2: the people who influence each value (:meth:`DuckDBBackend.influence`), and group keys
  that split off fewer than k people (``key_branch``);
* rule 6: the classes of an analysis phenotype;
* rule 4: the linear audit of person sets per statistic (:mod:`genofed.privacy.setaudit`);
* rule 5: per-variant releases charged to the membership gate, presence questions to the beacon
  budget;
* rule 8: bounded fragments, the release cache, the ledger charge and the noise;
* then :func:`genofed.privacy.rules.release`: the one table that may leave.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from genofed.engine.combine import narrow_integers
from genofed.engine.errors import DisclosureError, UnsupportedError

log = logging.getLogger("genofed.node")


class ReleaseGates:
    """The release rules of one node (see the module docstring)."""

    def __init__(self, node: Any):
        self.node = node
        self.config = node.config
        self.backend = node.backend

    # -- the disclose step ------------------------------------------------------------------------------
    def disclose(self, req: Any) -> None:
        """Rules 2-6 and 8 for an executed fragment, then the one disclosure step: ``req.released``."""
        from genofed.privacy.rules import release

        frag, k = req.frag, self.config.min_count
        influence = None
        if req.dp_plan is not None:
            self._dp_release(req)
        else:
            if k > 1:
                infl = getattr(self.backend, "influence", None)
                branches = getattr(self.backend, "key_branches", None)
                if infl is None or branches is None:
                    _needs_influence(frag, self.backend.name)
                influence = infl(frag) if infl is not None else None
                if branches is not None and any(b < k for b in branches(frag)):
                    raise DisclosureError(
                        f"a group key splits off fewer than {k} people at this node (a CASE, IF or comparison whose branch "
                        "few or none take): the groups' existence and sizes would single them out; group by a coarser "
                        "condition", rule="key_branch")
                self.check_phenotype(frag)
            sets = self.backend.sample_sets(frag) if self._needs_sets(frag) else None
            vidx = (np.unique(np.asarray(self.backend.variant_selection(frag), np.int64))
                    if k > 1 and hasattr(frag, "select") and genomic_release(frag) is not None else None)
            risk = self.guard(frag, req.researcher, req.combine, sets, qid=req.query_id, vidx=vidx)
            if risk:
                req.notes["risk"] = risk
            req.table = self.mac_guards(frag, req.table, sets, vidx)
        out = release(frag, narrow_integers(req.table), req.combine, self.config, quasi_identified=self.quasi_identified(frag),
                      query_id=req.query_id, influence=influence, fragment_sql=req.sql)
        if out.withheld:
            req.notes["withheld"] = out.withheld
        req.released = out

    def _needs_sets(self, frag: Any) -> bool:
        """Whether :meth:`guard` or :meth:`mac_guards` reads the fragment's sample sets."""
        return self.config.min_count > 1 and (self.config.differencing or genomic_release(frag) is not None)

    def mac_guards(self, frag: Any, table: pa.Table, sets: Any, vidx: np.ndarray | None = None) -> pa.Table:
        """Rule 5's minimum minor-allele count in every released cell of a SQL frequency release.

        A released value computed from genotype values (allele counts and frequencies, genotype
        counts, ``sum(dosage)``, a pivot, a burden over a region, however spelled) rests on the
        alleles of the variants that fed it, among the people of its cell. Each row gets two
        guard columns: over the variants feeding it, the fewest ALT copies (``_nm0``) and the
        fewest REF copies (``_nm1``) among its cell's people at this node (counted on the store's
        bit planes, whatever the query's value conditions). They leave this node as values
        nowhere: in plain mode a row below ``[policy] min_mac`` is withheld here
        (:func:`genofed.privacy.rules.guard_small`), under MPC and HE they are count lanes tested
        federation-wide (a sum of per-node minima is at most the federation-wide minimum, so the
        test is conservative). A zero fails too: the answer for a target's singleton alleles must
        not differ between a cohort with the target (1, withheld) and one without (0).

        Rows map to variants through their variant group keys, evaluated on the variants table;
        a row whose variants cannot be told (a key through a CTE, or mixing genotype values)
        rests on every selected variant."""
        if (not hasattr(frag, "select") or genomic_release(frag) != "frequencies" or table is None
                or not table.num_rows or self.config.min_count <= 1 or not _reads_alleles(frag)):
            return table
        from genofed.genomics.kernels import group_counts
        from genofed.genomics.store import pack_mask

        store = self.backend.store
        n = store.manifest.n_samples
        if vidx is None:
            vidx = np.unique(np.asarray(self.backend.variant_selection(frag), np.int64))
        skeys = list(sets.keys) if sets is not None else []
        members = list(sets.members) if sets is not None else [np.arange(n, dtype=np.int64)]
        if not members:
            members = [np.zeros(0, np.int64)]
        # cells with the same people (a key the sample-set plan cannot tell is a variant's) are counted once
        by_people: dict[bytes, int] = {}
        same = np.array([by_people.setdefault(np.sort(np.asarray(m, np.int64)).tobytes(), len(by_people)) for m in members], np.int64)
        distinct = [members[int(i)] for i in np.unique(same, return_index=True)[1]]
        from genofed.engine import limits

        limits.reserve(8.0 * len(vidx) * len(distinct) * 6 + len(distinct) * n / 8, "counting the alleles behind each released cell")
        masks = np.stack([pack_mask(np.asarray(m, np.int64), n) for m in distinct])
        from genofed.engine.backends.genokernel import take_counts

        needed = ("alt1", "alt2", "called", "diploid")
        c = take_counts(store.planes, vidx, masks, needed)  # the count kernel's own pass, when it ran this fragment
        if c is None:
            c = group_counts(store.planes, vidx, masks, needed, complete=store.complete)
        alt = c["alt1"] + c["alt2"]  # [variants, distinct people sets]
        ref = c["called"] + c["diploid"] - alt
        cell = _row_cells(table, skeys, sets)
        cell = np.where(cell >= 0, same[np.maximum(cell, 0)], -1)
        groups = self._variant_groups(frag, table, skeys, vidx)
        if groups is None:  # every selected variant feeds every row
            g_alt, g_ref = (alt.min(axis=0)[None, :], ref.min(axis=0)[None, :]) if len(vidx) else (
                np.zeros((1, alt.shape[1]), np.int64), np.zeros((1, alt.shape[1]), np.int64))
            row_group = np.zeros(table.num_rows, np.int64)
        else:
            v_group, row_group, n_groups = groups
            g_alt = np.full((n_groups + 1, alt.shape[1]), 0, np.int64)  # the last group: rows no selected variant maps to
            g_ref = g_alt.copy()
            big = np.iinfo(np.int64).max
            g_alt[:n_groups], g_ref[:n_groups] = big, big
            np.minimum.at(g_alt, v_group, alt)
            np.minimum.at(g_ref, v_group, ref)
            g_alt[g_alt == big], g_ref[g_ref == big] = 0, 0
            row_group = np.where(row_group < 0, n_groups, row_group)
        ok = cell >= 0
        safe = np.where(ok, cell, 0)
        nm0 = np.where(ok, g_alt[row_group, safe], 0)
        nm1 = np.where(ok, g_ref[row_group, safe], 0)
        from genofed.privacy.secure.layout import MAC_PREFIX

        return table.append_column(f"{MAC_PREFIX}0", pa.array(nm0.astype(np.int64))).append_column(
            f"{MAC_PREFIX}1", pa.array(nm1.astype(np.int64)))

    def _variant_groups(self, frag: Any, table: pa.Table, skeys: list[str], vidx: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
        """``(group of each selected variant, group of each row (-1: none), number of groups)`` by
        the fragment's variant keys evaluated on the variants table, or None when rows cannot be
        mapped to their variants (no variant key, or one the variants table cannot evaluate)."""
        outer, reads = _variant_lineage(frag.select)
        if outer is None:
            return None
        bodies = {p.alias_or_name: p.unalias() for p in frag.select.expressions}
        vkeys = [k for k in frag.keys if k not in skeys and k in bodies and reads(bodies[k], outer)]
        if not vkeys:
            return None
        exprs = []
        for k in vkeys:
            e = _on_variants(bodies[k], outer)
            if e is None:
                return None
            exprs.append(exp.alias_(e, k))
        from genofed.engine.sqlcheck import DIALECT

        q = (exp.select(exp.column("vidx", table="_variants"), *exprs).from_("_variants")
             .join("_mac_vidx", using=["vidx"]).order_by(exp.column("vidx", table="_variants")).sql(DIALECT))
        cur = self.backend.con.cursor()
        try:
            cur.register("_mac_vidx", pa.table({"vidx": pa.array(vidx, pa.int64())}))
            vt = cur.sql(q).to_arrow_table()
        except Exception:  # noqa: BLE001  # not evaluable on the variants table: every variant feeds every row
            return None
        finally:
            cur.close()
        if vt.num_rows != len(vidx):
            return None
        v_keys = vt.select(vkeys)
        v_group = _first_match(v_keys, v_keys, vkeys)  # a variant's group: the first selected variant with its key
        row_group = _first_match(v_keys, table, vkeys)
        if v_group is None or row_group is None:
            return None
        return v_group, row_group, len(vidx)

    def quasi_identified(self, frag: Any) -> bool:
        """Whether a fragment reads a quasi-identifier column (its groups must be k-anonymous here)."""
        if not self.config.quasi_identifiers or not hasattr(frag, "select"):
            return False
        from genofed.engine.samplesets import referenced_columns

        return bool(referenced_columns(frag.select) & set(self.config.quasi_identifiers))

    def check_phenotype(self, frag: Any) -> None:
        """Rule 6 for analyses with a phenotype: enough people in each class (binary) or with a
        non-zero value (continuous) at this node."""
        if (getattr(frag, "sample_sql", None) is None or not (getattr(frag, "args", None) or {}).get("phenotype")
                or not hasattr(self.backend, "con")):
            return
        from genofed.engine.backends.analysis import AnalysisData
        from genofed.privacy.rules import check_phenotype

        check_phenotype(AnalysisData(self.backend, frag).samples.y, self.config.min_count)  # type: ignore[arg-type]  # has .con

    # -- rules 4 and 5 ----------------------------------------------------------------------------------
    def guard(self, frag: Any, researcher: str, mode: str, sets: Any = False, qid: str = "?", noisy: bool = False,
              vidx: np.ndarray | None = None) -> dict[str, Any] | None:
        """The release gates that depend on who is counted: the linear audit of person sets per
        statistic (rule 4, :mod:`genofed.privacy.setaudit`: refuse a release that, with earlier
        ones to the same researcher, determines a total over fewer than min_count people) and the
        genomic re-identification gate (membership risk of per-variant statistics, the
        beacon budget). Both depend on sample sets, variants and history only, never on the
        values being released. Returns the risk score for provenance (or None)."""
        node = self.node
        differencing = self.config.differencing and self.config.min_count > 1
        # with min_count 1 the steward releases groups of one person: nothing left to protect
        genomic = genomic_release(frag) if self.config.min_count > 1 else None
        if not differencing and genomic is None:
            return None
        if sets is False:
            sets = self.backend.sample_sets(frag)
        if sets is None:
            return None
        k = self.config.min_count
        secure = mode != "plain"
        sizes = [len(m) for m in sets.members]
        # plain: cells below the minimum count are suppressed here (not released); a global
        # aggregate over nobody is released as zero. secure: the node's own counts are not
        # released, but every non-empty cell enters the federation-wide sums.
        keep = [(s > 0) if secure else (s >= k or (s == 0 and not sets.keys)) for s in sizes]
        if differencing and not noisy:  # differentially private releases: their noise is accounted by the ledger
            self._audit_sets(frag, researcher, qid, sets, keep, secure)
        if genomic is None:
            return None
        if vidx is None:
            vidx = self._released_variants(frag)
        if genomic == "frequencies" and hasattr(frag, "select") and not any(by_variant(frag)):
            # every selected variant feeds one value per group (a burden, a mean over a region):
            # one statistic per cohort, not one per variant (a value conditioned on a variant
            # column, a pivot with one column per variant, is charged every selected variant)
            vidx = vidx[:1]
        if genomic == "frequencies":
            cohorts = [m for m, ok in zip(sets.members, keep, strict=True) if ok and len(m)]
            if differencing and cohorts:  # the finest cohorts the released sets let the researcher compute
                from genofed.privacy.setaudit import statistics_of

                cohorts = node.set_audit.atoms(researcher, statistics_of(frag), np.concatenate(cohorts))
            # plain: this node's own frequencies are released, so its own cohort is the attacked
            # pool and the attack is measured on it; secure: only federation-wide sums are, over a
            # pool this node cannot see (the analytic bound, on its own smaller cohort)
            return node.membership.check_frequencies(researcher, cohorts, vidx, None if secure else self._measured_power)
        # presence: each selected variant is a beacon question, charged its worst case
        from genofed.privacy.reid import conservative_frequencies

        ac, an = self.allele_counts(vidx)
        freqs = conservative_frequencies(ac, an)
        return node.membership.check_beacon(researcher, freqs, np.ones(len(vidx), bool), self.backend.store.manifest.n_samples)

    def _audit_sets(self, frag: Any, researcher: str, qid: str, sets: Any, keep: list[bool], secure: bool) -> None:
        """Rule 4: the linear audit of this release's person sets, per statistic
        (:mod:`genofed.privacy.setaudit`). A refusal names the earlier releases it conflicts with:
        their query ids, times and SQL as the researcher wrote them."""
        from genofed.privacy.setaudit import AuditConflict, Row, statistics_of

        rows = [Row(m, direct=not secure) for m, ok in zip(sets.members, keep, strict=True) if ok and len(m)]
        if not rows:
            return
        try:
            self.node.set_audit.check_and_record(researcher, qid, {s: rows for s in statistics_of(frag)}, self.config.min_count)
        except AuditConflict as e:
            raise DisclosureError(f"{e}{self._describe_releases(researcher, e.conflicts)}", rule=e.rule) from None

    def _describe_releases(self, researcher: str, query_ids: list[str]) -> str:
        """The researcher's own earlier releases, as they wrote them (for a refusal that names them)."""
        import datetime as dt

        lines = []
        for q in query_ids[:3]:
            for r in self.node.releases.by_query(researcher, q)[:1]:
                when = dt.datetime.fromtimestamp(r.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                sql = " ".join((r.user_sql or "(SQL not recorded)").split())
                lines.append(f"query {q} at {when}: {sql[:300]}")
        return ("; the conflicting earlier answer(s): " + " | ".join(lines)) if lines else ""

    def _released_variants(self, frag: Any) -> np.ndarray:
        """Store rows of the variants whose values feed a release (an analysis: its variants)."""
        if hasattr(frag, "select"):
            return np.asarray(self.backend.variant_selection(frag), np.int64)
        from genofed.engine.backends.analysis import AnalysisData

        if not hasattr(self.backend, "con"):  # a Hail node runs no analyses (analyses = "refuse")
            return np.zeros(0, np.int64)
        data = AnalysisData(self.backend, frag)  # type: ignore[arg-type]  # analyses run on the embedded backend's data
        vidx = np.asarray(data.variants.column("vidx").to_numpy(), np.int64)
        min_maf = (getattr(frag, "args", None) or {}).get("min_maf")
        if isinstance(min_maf, int | float) and min_maf > 0 and len(vidx):  # PCA releases only the variants it uses
            ac, an = self.allele_counts(vidx)
            order = np.argsort(vidx)
            af = np.zeros(len(vidx))
            af[order] = np.where(an > 0, ac / np.maximum(an, 1), 0.0)
            vidx = vidx[np.minimum(af, 1 - af) >= float(min_maf)]
        return vidx

    def _measured_power(self, members: np.ndarray, vidx: np.ndarray) -> float:
        """The membership attack's power simulated at this cohort's own allele frequencies (rule 5;
        the analytic model holds for common variants only): a pool of the cohort's size drawn at
        those frequencies, the attacker knowing the population frequencies exactly (the worst
        case), members against non-members of the same population. Simulating at the cohort's
        frequencies rather than scoring its real members against the node's other people keeps
        ancestry from passing for membership. Releases without rare variants, or too large to
        simulate (their analytic power already decides), are not simulated."""
        if not len(vidx) or not len(members):
            return 0.0
        from genofed.genomics.kernels import genotype_rows
        from genofed.privacy.reid import membership_power

        store = self.backend.store
        n = store.manifest.n_samples
        t = genotype_rows(store.planes, np.sort(vidx), n)
        dos = t.column("dosage").to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(vidx), n)[:, members]
        f = np.nan_to_num(np.nanmean(dos, axis=1) / 2)
        rare = np.minimum(f, 1 - f) * 2 * len(members) < 10
        n_sim = int(np.ceil(20 / self.config.risk.fpr))  # enough non-members for an empirical threshold
        if not rare.any() or (n_sim + len(members)) * len(vidx) > 50_000_000:
            return 0.0
        rng = np.random.default_rng(len(members) * 1_000_003 + len(vidx))
        pool = rng.binomial(2, f, size=(len(members), len(vidx))).astype(np.float64)
        p_hat = pool.mean(axis=0) / 2
        est = membership_power(pool, p_hat, f, fpr=self.config.risk.fpr, rng=rng, n_pool=len(members),
                               n_simulated=n_sim, threshold="empirical")
        return float(est.power)

    def allele_counts(self, vidx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This node's alternate allele counts and allele numbers at store variant rows."""
        from genofed.genomics.kernels import group_counts
        from genofed.genomics.store import pack_mask

        store = self.backend.store
        n = store.manifest.n_samples
        vs = np.sort(np.asarray(vidx, np.int64))
        if not len(vs):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        masks = pack_mask(np.arange(n, dtype=np.int64), n)[None, :]
        c = group_counts(store.planes, vs, masks, ("alt1", "alt2", "called", "diploid"), complete=store.complete)
        return (c["alt1"] + c["alt2"])[:, 0].astype(np.int64), (c["called"] + c["diploid"])[:, 0].astype(np.int64)

    # -- rule 8 -------------------------------------------------------------------------------------------
    def clinical_multiplicity(self) -> dict[str, int]:
        """The most rows one sample has in each clinical table (bounds a sample's rows under DP)."""
        cached = getattr(self, "_multiplicity", None)
        if cached is not None:
            return cached
        out = {}
        for t in self.backend.store.manifest.clinical:
            cur = self.backend.con.cursor()  # server threads never share one DuckDB connection
            try:
                rows = cur.sql(f'SELECT max(c) FROM (SELECT count(*) AS c FROM "{t}" GROUP BY sample_id)').fetchall()
            finally:
                cur.close()
            out[t] = int(rows[0][0] or 1)
        self._multiplicity = out
        return out

    def dp_execute(self, req: Any, mech: Any) -> None:
        """The execute step with an epsilon: the bounded fragment (rule 8), served from the release
        cache when this researcher asked exactly this before (so noise cannot be averaged away)."""
        from genofed.privacy.dp import noise_scale
        from genofed.privacy.dpnode import plan_dp
        from genofed.privacy.ledger import release_key

        frag = req.frag
        n_var: int | None
        if not hasattr(frag, "select"):  # an analysis round: its variants bound a sample's contribution
            vidx = None
            n_var = self._analysis_variants(frag)
        else:
            vidx = self.backend.variant_selection(frag) if "genotypes" in getattr(frag, "tables", set()) else None
            n_var = None if vidx is None else len(vidx)
        plan = plan_dp(frag, self.config.dp, n_var, self.clinical_multiplicity())
        sets = self.backend.sample_sets(frag)
        key = release_key(*self._release_identity(frag, req.sql, sets, vidx), req.combine, mech, l1=plan.l1, l2=plan.l2,
                          data=self.backend.catalog().get("variants_digest"))
        req.dp_plan = {"plan": plan, "mech": mech, "key": key, "sets": sets, "cached": False}
        cached = self.node.ledger.cache.get(req.researcher, key)
        if cached is not None:
            req.table, req.dp_plan["cached"] = cached, True
            return
        noise_scale(mech, plan.l1, plan.l2)  # calibrate first: a request OpenDP cannot serve costs no budget
        req.table = self.backend.execute(plan.fragment)

    def _dp_release(self, req: Any) -> None:
        """The disclose step with an epsilon: rules 4-5 on the person sets, the ledger charge, then
        the noise, once per identical release (a racing identical query gets the stored one)."""
        from genofed.privacy.audit import fragment_digest
        from genofed.privacy.dpnode import noise_table

        d = req.dp_plan
        if d["cached"]:
            req.notes["dp"] = {"cached": True, **_dp_meta(req.table)}
        else:
            plan, mech, ledger = d["plan"], d["mech"], self.node.ledger
            risk = self.guard(req.frag, req.researcher, req.combine, d["sets"], qid=req.query_id, noisy=True)
            pol = self.config.dp
            decision = ledger.charge_or_cached(req.researcher, str(req.query_id), fragment_digest(req.sql), d["key"], mech.epsilon,
                                               mech.delta, pol.budget_epsilon, pol.budget_delta)
            if decision.hit:  # an identical release, charged and stored by a racing query: its noise, its details
                req.table = decision.cached
                req.notes["dp"] = {"cached": True, **_dp_meta(decision.cached)}
            else:
                noisy, prov = noise_table(req.table, req.frag, mech, plan)
                prov = {**prov, "remaining_epsilon": decision.charge.remaining_epsilon, **({"membership_risk": risk} if risk else {})}
                noisy = noisy.replace_schema_metadata({b"genofed.dp": json.dumps(prov).encode()})
                req.table = ledger.put(req.researcher, d["key"], noisy)  # a racing identical query may have stored first: that one
                req.notes["dp"] = _dp_meta(req.table) or prov
        if "membership_risk" in req.notes["dp"]:
            req.notes["risk"] = req.notes["dp"].pop("membership_risk")

    def _analysis_variants(self, frag: Any) -> int:
        """How many variants an analysis round reads at this node."""
        cur = self.backend.con.cursor()
        try:
            rows = cur.sql(f"SELECT count(*) FROM ({frag.variant_sql})").fetchall()
        finally:
            cur.close()
        return int(rows[0][0])

    def _release_identity(self, frag: Any, sql: str, sets: Any, vidx: np.ndarray | None) -> tuple[str]:
        """What a noisy release is cached under. When every table read has at most one row per
        sample and no condition reads genotype values, the answer depends only on the aggregates,
        the group keys, the samples in each group and the variants: near-duplicate predicates
        selecting the same people (``age >= 40`` vs ``age > 39.99``) then get the same cached noisy
        answer, so they cannot be averaged either. Otherwise the fragment text is the identity."""
        from genofed.engine.samplesets import plan_sample_sets

        if sets is None or not hasattr(frag, "select"):
            return (sql,)
        names = {t.name for t in frag.select.find_all(exp.Table)}
        plan = plan_sample_sets(frag.select, list(frag.keys), frag.sample_id)
        if plan is None or plan.genotype_values or any(self.clinical_multiplicity().get(t, 1) > 1 for t in names):
            return (sql,)
        shape = frag.select.copy()
        shape.set("where", None)
        digest = hashlib.sha256()
        digest.update(shape.sql().encode())
        cells = sorted((json.dumps(list(cell), default=str), np.sort(np.asarray(m, np.int64)).tobytes())
                       for cell, m in zip(sets.cells, sets.members, strict=True))
        for cell_key, members in cells:  # in a fixed order: DuckDB returns groups in any order
            digest.update(cell_key.encode())
            digest.update(members)
        if vidx is not None:
            digest.update(np.asarray(vidx, np.int64).tobytes())
        return ("who:" + digest.hexdigest(),)


def _needs_influence(frag: Any, backend: str) -> None:
    """Fail closed on a backend that cannot count who influences each value (rule 2): a fragment
    whose sums or counts people can weigh, or whose group keys branch on a condition, is refused
    rather than released unchecked."""
    if not hasattr(frag, "select") or getattr(frag, "sample_id", None) is None:
        return
    from genofed.engine.backends.duckdb import branch_conditions, influence_partials

    keyed = [p.unalias() for p in frag.select.expressions if p.alias_or_name in frag.keys]
    if influence_partials(frag) or any(branch_conditions(b) for b in keyed):
        raise UnsupportedError(
            f"this node's {backend} backend cannot count the people behind each value (disclosure rule 2), so it does not "
            "release SUM(x) or COUNT(x) over people, or groups keyed on a condition, below an epsilon; ask with an "
            "epsilon, or count people with COUNT(*) / COUNT(DISTINCT sample_id)")


def _dp_meta(table: pa.Table) -> dict[str, Any]:
    return dict(json.loads((table.schema.metadata or {}).get(b"genofed.dp", b"{}")))


def _variant_lineage(select: exp.Select) -> tuple[Any, Any]:
    """``(outer scope, reads)``: ``reads(expr, scope)`` says whether an expression of that scope
    reads a variant column (``variant_id``, ``chrom``, ``pos``, ... of ``genotypes`` or
    ``variants``), directly or through a CTE or subquery output derived from one, whatever it is
    called on the way (``WITH d AS (SELECT variant_id AS x ...) SELECT x ...``)."""
    from sqlglot.optimizer.scope import Scope, traverse_scope

    from genofed.engine.schema import GENOTYPE_VARIANT_COLUMNS
    from genofed.privacy.identifiers import column_source

    cols = set(GENOTYPE_VARIANT_COLUMNS) | {"variant_id", "chrom", "pos", "ref", "alt", "rsid", "qual", "filter"}
    derived: dict[int, set[str]] = {}  # id(scope body) -> output names derived from a variant column

    def is_variant(col: exp.Column, scope: Any) -> bool:
        src = column_source(col, scope)
        if isinstance(src, exp.Table):
            return src.name in ("genotypes", "variants") and col.name in cols
        if isinstance(src, Scope):
            return col.name in derived.get(id(src.expression), set())
        return not col.table and col.name in cols  # unresolved: by name, the safe side

    def reads(e: exp.Expression, scope: Any) -> bool:
        return any(is_variant(c, scope) for c in e.find_all(exp.Column))

    outer = None
    for scope in traverse_scope(select):  # inner scopes first
        body = scope.expression
        if isinstance(body, exp.Select):
            derived[id(body)] = {p.alias_or_name for p in body.expressions if reads(p, scope)}
        outer = scope
    return outer, reads


def _first_match(left: pa.Table, right: pa.Table, keys: list[str]) -> np.ndarray | None:
    """For each row of ``right``, the first row of ``left`` with the same key (-1: none; NULL
    equals NULL), or None when the key types cannot be compared."""
    from genofed.engine.keycodes import KeyTypeError, key_codes

    try:
        left = pa.table({k: left.column(k).cast(right.column(k).type) for k in keys})
        if len(keys) == 1:  # Arrow's hash lookup, in C
            hit = pc.index_in(right.column(keys[0]), value_set=left.column(keys[0]).combine_chunks(), skip_nulls=False)
            return pc.fill_null(hit, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes, _ = key_codes([left, right.select(keys)], keys)
    except (KeyTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    l_codes, r_codes = codes[:left.num_rows], codes[left.num_rows:]
    uniq, first = np.unique(l_codes, return_index=True)
    pos = np.minimum(np.searchsorted(uniq, r_codes), max(len(uniq) - 1, 0))
    return np.where(len(uniq) and (uniq[pos] == r_codes), first[pos] if len(uniq) else -1, -1).astype(np.int64)


def _reads_alleles(frag: Any) -> bool:
    """Whether a fragment reads which alleles people carry, not only whether a call was made:
    a genotype value anywhere but inside ``COUNT(dosage)`` or ``allele_number(dosage)`` (call
    counts and call rates, which rule 5's minimum minor-allele count does not concern)."""
    for col in frag.select.find_all(exp.Column):
        if col.name not in ("dosage", "phased", "ploidy"):
            continue
        parent = col.parent
        if not (isinstance(parent, exp.Count) or (isinstance(parent, exp.Anonymous) and parent.name.lower() == "allele_number")):
            return True
    return False


def _row_cells(table: pa.Table, skeys: list[str], sets: Any) -> np.ndarray:
    """Each released row's sample cell (an index into ``sets.members``; -1: none)."""
    if not skeys:
        return np.zeros(table.num_rows, np.int64)
    cells = pa.table({k: pa.array([c[i] for c in sets.cells]) for i, k in enumerate(skeys)})
    at = _first_match(cells, table, skeys)
    return np.full(table.num_rows, -1, np.int64) if at is None else at


def _on_variants(e: exp.Expression, scope: Any) -> exp.Expression | None:
    """A group key over variant columns only, rewritten to read the variants table (None when it
    reads anything else)."""
    from sqlglot.optimizer.scope import Scope

    from genofed.engine.schema import GENOTYPE_VARIANT_COLUMNS
    from genofed.privacy.identifiers import column_source

    for col in e.find_all(exp.Column):
        src = column_source(col, scope) if col.table else None
        if isinstance(src, Scope) or (src is not None and not (isinstance(src, exp.Table) and src.name in ("genotypes", "variants"))):
            return None
        if col.name not in GENOTYPE_VARIANT_COLUMNS:
            return None
    return e.copy().transform(lambda n: exp.column(n.name) if isinstance(n, exp.Column) else n)


def by_variant(frag: Any) -> tuple[bool, bool]:
    """``(keys, values)``: whether a fragment's groups split by variant (a key reads a variant
    column, however written: ``variant_id``, ``variant_id || ''``, ``pos / 1000``, or a CTE or
    subquery column derived from one), and whether a released value (not a group key) reads one:
    one column per variant (``SUM(CASE WHEN variant_id = 'v1' THEN dosage END) AS v1, ...``, or
    the same pivot built in a CTE) releases per-variant statistics without any group splitting
    by variant. One scope traversal for both."""
    outer, reads = _variant_lineage(frag.select)
    if outer is None:
        return False, False
    split = [(p.alias_or_name in frag.keys, p.unalias()) for p in frag.select.expressions]
    return any(reads(b, outer) for key, b in split if key), any(reads(b, outer) for key, b in split if not key)


def genomic_release(frag: Any) -> str | None:
    """Rule 5, from what the fragment reads, not how it is spelled: 'presence' for beacon-style
    questions (counts of who has a genotype value, the WHERE clause choosing carriers),
    'frequencies' for any other release computed from genotype values (allele counts however
    written: ``SUM(dosage)``, ``COUNT(CASE WHEN dosage = 1 ...)``, keys such as
    ``variant_id || ''``; GWAS, association, LD, PCA and Fst rounds), else None."""
    if not hasattr(frag, "select"):
        return "frequencies" if getattr(frag, "sample_sql", None) is not None and getattr(frag, "variant_sql", None) else None
    if "genotypes" not in frag.tables:
        return None
    sel = frag.select
    g_tables = {t.alias_or_name for t in sel.find_all(exp.Table) if t.name == "genotypes"}
    values = [c for c in sel.find_all(exp.Column) if c.name in ("dosage", "phased", "ploidy") and (c.table in g_tables or not c.table)]
    if not values:
        return None  # genotype rows counted without their values: who was genotyped, not what they carry
    bodies = {p.alias_or_name: p.unalias() for p in sel.expressions}
    where = sel.args.get("where")
    on_values = where is not None and any(c.table in g_tables and c.name in ("dosage", "phased", "ploidy")
                                          for c in where.find_all(exp.Column))
    if on_values and not any(s is not sel for s in sel.find_all(exp.Select)) and all(isinstance(bodies[p], exp.Count) for p in frag.partials):
        return "presence"  # who carries an allele, counted: a beacon question per selected variant
    return "frequencies"
