"""The distribution's command line with only some parts installed, and in KServe's form.

Each image carries one part (``infergraph[router]`` or ``infergraph[operator]``): a command
must work without the other part's packages, and a command whose packages are missing says
which extra installs them. Child processes here cannot import the blocked packages at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infergraph.cli import kserve_form
from infergraph.testing.paths import REPO

ROUTER_PACKAGES = ("aiohttp", "uvloop", "httptools", "tritonclient", "grpc", "hpack", "opentelemetry",
                   "prometheus_client", "numpy")  # fmt: skip
OPERATOR_PACKAGES = ("kopf", "kubernetes")

BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocked())
sys.argv = ["infergraph", *{argv!r}]
from infergraph.cli import main
sys.exit(main())
"""


def infergraph(blocked: tuple[str, ...], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = BLOCKER.format(blocked=set(blocked), argv=list(argv))
    return subprocess.run(
        [sys.executable, "-P", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_the_operators_commands_need_no_router_packages(tmp_path: Path) -> None:
    done = infergraph(ROUTER_PACKAGES, "crds", "--out", str(tmp_path / "crds"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "crds").iterdir())
    done = infergraph(ROUTER_PACKAGES, "operator", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_validate_needs_neither_serving_stack(tmp_path: Path) -> None:
    graph = REPO / "graphs" / "bench-sequence-1.yaml"
    done = infergraph(ROUTER_PACKAGES + OPERATOR_PACKAGES, "validate", str(graph), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok {graph}")


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        (ROUTER_PACKAGES, ("--graph-json", '{"nodes": {}}'), "router"),
        (OPERATOR_PACKAGES, ("operator", "--all-namespaces"), "operator"),
    ],
)
def test_a_missing_part_names_its_extra(
    blocked: tuple[str, ...], argv: tuple[str, ...], extra: str, tmp_path: Path
) -> None:
    done = infergraph(blocked, *argv, cwd=tmp_path)
    assert done.returncode == 2
    assert f"pip install 'infergraph[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_kserves_arguments_mean_the_router() -> None:
    assert kserve_form(["--graph-json", "{}"]) == ["router", "--graph-json", "{}"]
    assert kserve_form(["router", "--graph-json", "{}"]) == ["router", "--graph-json", "{}"]
    assert kserve_form(["--help"]) == ["--help"]
    assert kserve_form([]) == []
