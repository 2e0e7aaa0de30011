"""The committed CRD manifests are exactly what the models generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergraph.operator.crds import render
from infergraph.operator.resources import GROUP, KINDS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "crds"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_committed_crd_matches_the_models(kind: str) -> None:
    plural = KINDS[kind][2]
    committed = (DEPLOY / f"{GROUP}_{plural}.yaml").read_text()
    assert committed == render(kind), (
        f"deploy/crds is out of date for {kind}: run `.venv/bin/infergraph crds` and commit"
    )
