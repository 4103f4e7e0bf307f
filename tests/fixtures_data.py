"""Deterministic clinical fixtures for the 1000 Genomes 1126-sample set.

:func:`make_phenotypes_1126` writes the demo clinical table ``phenotypes`` used by the query
corpus (``tests/corpus.py``).  The values are synthetic (seeded) except ``outcome`` and
``status``, which are copied verbatim (same text, so bit-identical doubles) from
``samples_1126.tsv``.  For the three-node split use
``<shared>/1kg_phase3_subset_1126/suggested_3node_split.tsv`` (columns ``sample.id, node, ...``).
"""

from __future__ import annotations

import csv
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["PHENOTYPE_COLUMNS", "make_phenotypes_1126", "samples_1126_path", "split_1126_path"]

StrPath = str | PathLike[str]

#: Column order of the phenotypes CSV.
PHENOTYPE_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "age",
    "bmi",
    "ldl",
    "smoker",
    "outcome",
    "status",
)

_NULL_RATE = 0.02


def _dataset_dir() -> Path:
    try:
        from reftools import shared_data_path  # type: ignore[import-not-found]
    except ImportError:  # tests/ imported as a package
        from .reftools import shared_data_path  # type: ignore[no-redef]

    return shared_data_path() / "1kg_phase3_subset_1126"


def samples_1126_path() -> Path:
    """Path of ``samples_1126.tsv`` in the shared data (not checked for existence)."""
    return _dataset_dir() / "samples_1126.tsv"


def split_1126_path() -> Path:
    """Path of ``suggested_3node_split.tsv`` (``sample.id``, ``node``, ...)."""
    return _dataset_dir() / "suggested_3node_split.tsv"


def make_phenotypes_1126(
    path: StrPath, samples_tsv: StrPath | None = None, *, seed: int = 1126
) -> Path:
    """Write the deterministic ``phenotypes`` CSV for the 1126 samples and return its path.

    Columns: ``sample_id, age, bmi, ldl, smoker, outcome, status`` (in sheet order)

    * ``age``: int, uniform in 20..80;
    * ``bmi``: double, ~N(27, 4.5) clipped to [16, 50], one decimal, ~2 % empty (NULL);
    * ``ldl``: double, mmol/L, rises with age and bmi and with smoking, two decimals, ~2 % NULL;
    * ``smoker``: 0/1 (about 22 % smokers);
    * ``outcome``, ``status``: copied verbatim from ``samples_1126.tsv``.

    The same ``seed`` always gives the same file (numpy ``default_rng``, fixed formatting).
    """
    src = Path(samples_tsv) if samples_tsv is not None else samples_1126_path()
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise ValueError(f"{src}: no samples")
    id_col = next(iter(rows[0].keys()))
    n = len(rows)

    rng = np.random.default_rng(seed)
    age = rng.integers(20, 81, size=n)
    bmi = np.clip(rng.normal(27.0, 4.5, size=n), 16.0, 50.0)
    smoker = (rng.random(n) < 0.22).astype(int)
    ldl = np.clip(
        1.6 + 0.025 * age + 0.045 * (bmi - 27.0) + 0.25 * smoker + rng.normal(0.0, 0.6, size=n),
        0.5,
        9.0,
    )
    bmi_null = rng.random(n) < _NULL_RATE
    ldl_null = rng.random(n) < _NULL_RATE

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(PHENOTYPE_COLUMNS)
        for i, r in enumerate(rows):
            w.writerow(
                [
                    r[id_col],
                    int(age[i]),
                    "" if bmi_null[i] else f"{bmi[i]:.1f}",
                    "" if ldl_null[i] else f"{ldl[i]:.2f}",
                    int(smoker[i]),
                    r["outcome"],
                    r["status"],
                ]
            )
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    p = make_phenotypes_1126(sys.argv[1] if len(sys.argv) > 1 else "phenotypes_1126.csv")
    with open(p) as fh:
        print(p, sum(1 for _ in fh) - 1, "rows")
