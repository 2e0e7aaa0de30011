"""Each import-linter contract in pyproject.toml can fail: a copy of the package with one
forbidden import added breaks that contract (and `make contracts` keeps the real tree clean)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infergraph.testing.paths import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (module added to the copy, what it imports, the contract that must break)
CASES = [
    ("router/engine/_scratch.py", "import aiohttp", "The graph engine is pure"),
    ("router/engine/_scratch.py", "import numpy", "The graph engine is pure"),
    (
        "router/engine/_scratch.py",
        "import infergraph.predictors.servers",
        "The graph engine is pure",
    ),
    ("router/_scratch.py", "import kopf", "The router knows nothing of Kubernetes"),
    ("router/_scratch.py", "import infergraph.operator.graphs", "The router knows nothing"),
    ("operator/_scratch.py", "import infergraph.router.service.handler", "The operator reuses"),
    ("operator/_scratch.py", "import tritonclient", "The operator reuses"),
    ("router/service/_scratch.py", "import prometheus_client", "The service leaves telemetry"),
    ("router/service/_scratch.py", "import opentelemetry.trace", "The service leaves telemetry"),
    ("router/settings_scratch.py", "", None),  # a control: a harmless module breaks nothing
    ("router/engine/_scratch.py", "import infergraph.router.http.factory", "Router layers"),
    ("router/settings.py", "import infergraph.router.engine.plan", "Router layers"),
    (
        "predictors/_scratch.py",
        "import infergraph.operator.resources",
        "Dependencies point one way",
    ),
]


def lint(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as it is, copied with its links resolved."""
    tree = tmp_path_factory.mktemp("contracts")
    shutil.copytree(REPO / "src" / "infergraph", tree / "infergraph", symlinks=False)
    return tree


def test_the_real_tree_keeps_every_contract(pristine: Path) -> None:
    out = lint(pristine)
    assert "BROKEN" not in out, out
    assert "0 broken" in out, out


@pytest.mark.parametrize(("module", "line", "contract"), CASES)
def test_a_forbidden_import_breaks_its_contract(
    pristine: Path, tmp_path: Path, module: str, line: str, contract: str | None
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree, symlinks=False)
    target = tree / "infergraph" / module
    existing = target.read_text() if target.exists() else '"""Scratch."""\n'
    target.write_text(existing + f"\n{line}\n")
    out = lint(tree)
    broken = _names(out, "BROKEN")
    if contract is None:
        assert not broken, out
        assert len(_names(out, "KEPT")) == 6, out
        return
    assert [name for name in broken if name.startswith(contract)], (
        f"adding {line!r} to {module} should break {contract!r}:\n{out}"
    )


def _names(out: str, verdict: str) -> list[str]:
    """Contract names with the given verdict, joined across the report's line wraps."""
    names, current = [], ""
    for row in out.splitlines():
        current = f"{current} {row.strip()}".strip() if current else row.strip()
        if row.rstrip().endswith(("KEPT", "BROKEN")):
            if current.endswith(verdict):
                names.append(current)
            current = ""
        elif not row.strip():
            current = ""
    return names
