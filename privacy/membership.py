"""The node's genomic re-identification gate: membership risk of frequency releases, and a risk
budget for beacon-style presence queries.

Frequency releases. Per-variant allele statistics of a cohort let an attacker who holds a
person's genotypes test whether that person is in the cohort (Homer et al. 2008; the LR test of
Sankararaman et al. 2009). Its power at false-positive rate α grows with M/N, the number of
released variants over the cohort size: ``power ≈ Φ(sqrt(M/N) − z_{1−α})`` for independent
common variants and a perfectly known reference (:func:`genofed.privacy.reid.analytic_power`).
For rare variants the normal approximation fails (a singleton's carrier stands out at almost no
false positives), so the node also measures the attack on its own genotypes: the cohort's real
members against non-members simulated from the node's frequencies
(:func:`genofed.privacy.reid.membership_power`), and takes the larger power.

The cohorts charged are the finest the researcher can compute, not the ones the query names:
the node passes the classes of people who are in exactly the same released sets of the
statistic (:meth:`genofed.privacy.setaudit.SetAudit.atoms`), so slicing a cohort ("everyone but
15 people", again and again) charges each slice's 15 people as a cohort of 15. Per cohort, each
release adds its information ``I`` (the SNR² of the attack, ``(Φ⁻¹(power) + z_{1−α})²``, which is
M/N for common variants) for the variants not released for that cohort before, and the node
refuses a release that would take the cohort's cumulative power ``Φ(sqrt(ΣI) − z_{1−α})`` above the
cap (default 0.10 at α = 0.001). The power is the anonymisation score reported in the result's
provenance.

Presence queries (beacons). "Does anyone carry allele X" answered over and over lets the
Shringarpure–Bustamante (2015) LR test find members from a few rare alleles. Each answer is
charged its worst-case information to a per-researcher budget ``log(cap/α)`` (Raisaro et al.
2017; :class:`genofed.privacy.reid.BeaconBudget`), which bounds any test's power at the cap;
a query that does not fit is refused before it is answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genofed.engine.errors import ConfigError, DisclosureError

from .reid import BeaconBudget, _stats, analytic_power
from .tracker import state_db


@dataclass
class RiskPolicy:
    """``[risk]`` in node.toml."""

    max_membership_power: float = 0.10  # cap on the LR attack's power at fpr (1.0: gate off)
    fpr: float = 0.001
    beacon_cap: float = 0.10  # cap on a beacon attack's power at beacon_fpr (1.0: budget off)
    beacon_fpr: float = 0.05

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> RiskPolicy:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{where}: unknown [risk] keys {sorted(unknown)}; known: {sorted(known)}")
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
                raise ConfigError(f"{where}: [risk] {k} must be a number in (0, 1], got {v!r}")
        return cls(**{k: float(v) for k, v in d.items()})


class MembershipGate:
    """Released variants per (researcher, cohort) and beacon budgets, in SQLite (None: memory)."""

    def __init__(self, path: Path | None, n_variants: int, policy: RiskPolicy, n_samples: int = 0):
        self.policy = policy
        self.n_bytes = (n_variants + 7) // 8
        self.n_samples = n_samples
        self._lock = threading.Lock()
        self._con = state_db(path)
        self._con.execute("CREATE TABLE IF NOT EXISTS released_variants (researcher TEXT NOT NULL, cohort TEXT NOT NULL, "
                          "bits BLOB NOT NULL, PRIMARY KEY (researcher, cohort))")
        self._con.execute("CREATE TABLE IF NOT EXISTS beacon_spent (researcher TEXT PRIMARY KEY, spent REAL NOT NULL)")
        self._con.execute("CREATE TABLE IF NOT EXISTS cohort_information (researcher TEXT NOT NULL, cohort TEXT NOT NULL, "
                          "info REAL NOT NULL, PRIMARY KEY (researcher, cohort))")

    @staticmethod
    def cohort_key(members: np.ndarray) -> str:
        return hashlib.sha256(np.asarray(np.sort(members), np.int64).tobytes()).hexdigest()

    def _bits(self, researcher: str, cohort: str) -> np.ndarray:
        row = self._con.execute("SELECT bits FROM released_variants WHERE researcher = ? AND cohort = ?", (researcher, cohort)).fetchone()
        bits = np.zeros(self.n_bytes, np.uint8)
        if row is not None:
            b = np.frombuffer(zlib.decompress(row[0]), np.uint8)[: self.n_bytes]
            bits[: len(b)] = b
        return bits

    def _information(self, researcher: str, cohort: str) -> float:
        row = self._con.execute("SELECT info FROM cohort_information WHERE researcher = ? AND cohort = ?", (researcher, cohort)).fetchone()
        return float(row[0]) if row else 0.0

    def check_frequencies(self, researcher: str, cohorts: list[np.ndarray], vidx: np.ndarray,
                          calibrate: Callable[[np.ndarray, np.ndarray], float] | None = None) -> dict[str, Any]:
        """Refuse (rule ``membership_risk``) a release of per-variant statistics over ``vidx`` for
        these cohorts (store sample rows) if a cohort's cumulative attack power would pass the
        cap; otherwise charge it and return the score. ``calibrate(members, new_vidx)``: the
        attack's measured power on the node's genotypes (for rare variants)."""
        pol = self.policy
        new = np.zeros(self.n_bytes * 8, bool)
        new[np.asarray(vidx, np.int64)] = True
        new_bits = np.packbits(new)
        worst: dict[str, Any] = {"power": float(pol.fpr), "variants": 0, "fpr": pol.fpr, "cap": pol.max_membership_power,
                                 "method": "per derived cohort: max(analytic (Sankararaman 2009), measured on this node's genotypes)"}
        stats = _stats()
        z = float(stats.norm.isf(pol.fpr))
        with self._lock:
            updates = []
            for members in cohorts:
                n = len(members)
                if n == 0:
                    continue
                key = self.cohort_key(members)
                old = self._bits(researcher, key)
                fresh = np.unpackbits(new_bits & ~old)[: len(new)].astype(bool)
                m_new = int(fresh.sum())
                bits = old | new_bits
                if m_new == 0:  # nothing new for this cohort: its score as it stands
                    stored = self._information(researcher, key)
                    power_now = float(stats.norm.cdf(np.sqrt(stored) - z)) if stored > 0 else float(pol.fpr)
                    if power_now > worst["power"] or not worst["variants"]:
                        worst.update(power=power_now, variants=int(np.bitwise_count(bits).sum()))
                    continue
                power = analytic_power(m_new, n, None, pol.fpr)
                if calibrate is not None and power <= pol.max_membership_power < 1.0:
                    power = max(power, float(calibrate(np.asarray(members, np.int64), np.flatnonzero(fresh))))
                p = min(max(power, pol.fpr), 1 - 1e-12)
                gain = max(0.0, float(stats.norm.ppf(p)) + z) ** 2
                total = self._information(researcher, key) + gain
                power_now = float(stats.norm.cdf(np.sqrt(total) - z))
                if power_now > worst["power"] or not worst["variants"]:
                    worst.update(power=power_now, variants=int(np.bitwise_count(bits).sum()))
                if power_now > pol.max_membership_power:
                    raise DisclosureError(
                        "refused: releasing allele statistics for these variants of this cohort (with what you were given "
                        "before about the same people) would let a membership-inference attack (Homer 2008, Sankararaman "
                        "2009) detect its members above this node's risk cap; rare variants count most; ask for fewer or "
                        "more common variants, or a larger cohort", rule="membership_risk")
                updates.append((researcher, key, zlib.compress(bits.tobytes()), total))
            if updates:
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    self._con.executemany("INSERT OR REPLACE INTO released_variants (researcher, cohort, bits) VALUES (?, ?, ?)",
                                          [u[:3] for u in updates])
                    self._con.executemany("INSERT OR REPLACE INTO cohort_information (researcher, cohort, info) VALUES (?, ?, ?)",
                                          [(u[0], u[1], u[3]) for u in updates])
                    self._con.execute("COMMIT")
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
        return worst

    def check_beacon(self, researcher: str, freqs: np.ndarray, present: np.ndarray, n_beacon: int) -> dict[str, Any]:
        """Charge presence answers to the researcher's beacon budget; refuse (rule ``beacon_risk``)
        before answering when their worst-case cost does not fit."""
        pol = self.policy
        budget = BeaconBudget(max(1, n_beacon), fpr=pol.beacon_fpr, cap=pol.beacon_cap)
        yes, no = budget.costs(np.asarray(freqs, np.float64))
        worst = float(np.maximum(yes, no).sum())
        cost = float(np.where(np.asarray(present, bool), yes, no).sum())
        with self._lock:
            row = self._con.execute("SELECT spent FROM beacon_spent WHERE researcher = ?", (researcher,)).fetchone()
            spent = float(row[0]) if row else 0.0
            if pol.beacon_cap < 1.0 and spent + worst > budget.budget + 1e-12:
                raise DisclosureError(
                    "refused: this presence (beacon-style) query would exceed your re-identification risk budget at this node "
                    "(Shringarpure & Bustamante 2015; Raisaro et al. 2017); rare alleles cost the most", rule="beacon_risk")
            self._con.execute("INSERT INTO beacon_spent (researcher, spent) VALUES (?, ?) ON CONFLICT (researcher) "
                              "DO UPDATE SET spent = excluded.spent", (researcher, spent + cost))
        return {"beacon_spent": spent + cost, "beacon_budget": budget.budget, "beacon_cap": pol.beacon_cap}

    def close(self) -> None:
        self._con.close()
