"""The `.typecheck/genofed/` symlink tree mypy reads the package through (see pyproject.toml,
[tool.mypy]) matches pyproject's package-dir: a file or folder missing from it goes unchecked."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".typecheck" / "genofed"


def _expected() -> dict[str, Path]:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    want = {p.name: p for p in (ROOT / package_dir["genofed"]).glob("*.py")}
    for name, folder in package_dir.items():
        if name != "genofed":
            want[name.removeprefix("genofed.").replace(".", "/")] = ROOT / folder
    return want


def test_typecheck_tree_mirrors_package_dir() -> None:
    want = _expected()
    have = {p.name: p for p in TREE.iterdir()}
    fix = "; ".join(f"ln -s {Path('../..') / target.relative_to(ROOT)} {TREE.relative_to(ROOT) / name}"
                    for name, target in sorted(want.items()) if name not in have)
    assert not fix, f"missing links in .typecheck/genofed (mypy would not check them): {fix}"
    assert sorted(have) == sorted(want), f"stale links in .typecheck/genofed: {sorted(set(have) - set(want))}"
    for name, link in have.items():
        assert link.is_symlink() and not Path(link.readlink()).is_absolute(), f"{link}: not a relative symlink"
        assert link.resolve() == want[name].resolve(), f"{link} -> {link.resolve()}, expected {want[name]}"
