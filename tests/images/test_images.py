"""The images, run with podman the way KServe runs its router: the controller's arguments only
(``--graph-json <spec>``, the image's entrypoint kept), ``PROPAGATE_HEADERS`` in the
environment, a read-only root filesystem, a non-root user, every capability dropped, no
privilege escalation and no writable /tmp. Each container runs in a network namespace of the
test's own beside a real local predictor, so the router keeps its default port 8080.

``tests/images/build.sh`` (run by ``make images``) builds the images on a local Debian base."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from infergraph.predictors import processes
from infergraph.testing.netns import Netns
from infergraph.testing.paths import CACHE

ROUTER = "localhost/infergraph/router:test"
OPERATOR = "localhost/infergraph/operator:test"
PREDICTOR = 9000
IRIS = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
# As KServe's controller sets a router pod's security context.
KSERVE_POD = (
    "--read-only",
    "--read-only-tmpfs=false",  # podman would mount /tmp and /run writable; Kubernetes does not
    "--user", "65532:65532",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
)  # fmt: skip


def podman(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CACHE / "images" / "containers.conf")}
    return subprocess.run(
        ["podman", *argv], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


@pytest.fixture(scope="module", autouse=True)
def images() -> None:
    for image in (ROUTER, OPERATOR):
        if podman("image", "exists", image).returncode != 0:
            pytest.fail(f"{image} is missing: run `make images` (tests/images/build.sh)")


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netns]:
    """A namespace with the local predictor (the iris models) on port 9000."""
    with Netns("igimg") as ns:
        log = tmp_path_factory.mktemp("images") / "predictor.log"
        predictor = processes.predictor(PREDICTOR, models=True, log_path=log)
        predictor.argv = ns.argv(predictor.argv)
        predictor.probe = lambda url: ns.http(url, timeout=1).status == 200
        with predictor.start(timeout=120):
            yield ns


class Container:
    """A detached container in the namespace, removed at exit."""

    def __init__(self, ns: Netns, *argv: str, options: tuple[str, ...] = KSERVE_POD) -> None:
        done = podman("run", "-d", "--network", f"ns:{ns.path}", *options, *argv)
        assert done.returncode == 0, done.stderr
        self.id = done.stdout.strip()

    def logs(self) -> str:
        done = podman("logs", self.id)
        return done.stdout + done.stderr

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        podman("rm", "-f", "-t", "2", self.id)


def iris_graph(ns_url: str) -> str:
    v1 = "/v1/models/{}:predict"
    return json.dumps(
        {
            "nodes": {
                "root": {
                    "routerType": "Sequence",
                    "steps": [
                        # Records the headers it gets (GET /_calls); the next step takes the
                        # request again.
                        {"serviceUrl": ns_url + "/step/audit"},
                        {"serviceUrl": ns_url + v1.format("scaler"), "data": "$request"},
                        {
                            "serviceUrl": ns_url + v1.format("logistic"),
                            "data": "$response",
                            "mapPredictionsToInstances": True,
                        },
                    ],
                }
            }
        }
    )


def direct_answer(ns: Netns) -> Any:
    base = f"http://127.0.0.1:{PREDICTOR}/v1/models/"
    scaled = ns.http(base + "scaler:predict", json.dumps(IRIS).encode())
    assert scaled.status == 200, scaled.body
    instances = json.dumps({"instances": scaled.json()["predictions"]}).encode()
    answer = ns.http(base + "logistic:predict", instances)
    assert answer.status == 200, answer.body
    return answer.json()


def test_the_router_image_runs_as_kserve_runs_it(netns: Netns) -> None:
    spec = iris_graph(f"http://127.0.0.1:{PREDICTOR}")
    netns.http(f"http://127.0.0.1:{PREDICTOR}/_calls", timeout=2)  # warm
    with Container(
        netns, "-e", "PROPAGATE_HEADERS=X-Request-Id", ROUTER, "--graph-json", spec
    ) as c:
        try:
            netns.wait_for("http://127.0.0.1:8080/readyz", timeout=60)
        except TimeoutError:
            pytest.fail(f"the router never got ready:\n{c.logs()}")
        reply = netns.http(
            "http://127.0.0.1:8080/", json.dumps(IRIS).encode(), {"X-Request-Id": "img-1"}
        )
        assert reply.status == 200, (reply.body, c.logs())
        assert reply.json() == direct_answer(netns)
        calls = netns.http(f"http://127.0.0.1:{PREDICTOR}/_calls").json()["calls"]
        forwarded = [call["headers"].get("X-Request-Id") for call in calls]
        assert "img-1" in forwarded  # PROPAGATE_HEADERS reached the model server
        assert netns.http("http://127.0.0.1:8080/metrics").status == 200
        inspect = podman(
            "inspect", c.id, "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}"
        )
        assert inspect.stdout.split() == ["65532:65532", "true"]


def test_the_image_runs_the_sub_command_form_too(netns: Netns) -> None:
    spec = iris_graph(f"http://127.0.0.1:{PREDICTOR}")
    with Container(netns, ROUTER, "router", "--graph-json", spec, "--port", "8081") as c:
        try:
            netns.wait_for("http://127.0.0.1:8081/readyz", timeout=60)
        except TimeoutError:
            pytest.fail(f"the router never got ready:\n{c.logs()}")
        reply = netns.http("http://127.0.0.1:8081/", json.dumps(IRIS).encode())
        assert reply.status == 200
        assert reply.json() == direct_answer(netns)


def test_workers_say_what_to_mount_on_a_read_only_root(netns: Netns) -> None:
    spec = iris_graph(f"http://127.0.0.1:{PREDICTOR}")
    done = podman(
        "run", "--rm", "--network", f"ns:{netns.path}", *KSERVE_POD,
        ROUTER, "--graph-json", spec, "--workers", "2", "--port", "8082",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "mount a writable volume (an emptyDir at /tmp)" in done.stderr
    # With the volume it asks for, the workers serve.
    options = (*KSERVE_POD, "--tmpfs", "/tmp:rw,size=16m,mode=1777")
    with Container(
        netns, ROUTER, "--graph-json", spec, "--workers", "2", "--port", "8083", options=options
    ) as c:
        try:
            netns.wait_for("http://127.0.0.1:8083/readyz", timeout=60)
        except TimeoutError:
            pytest.fail(f"the workers never got ready:\n{c.logs()}")
        assert netns.http("http://127.0.0.1:8083/", json.dumps(IRIS).encode()).status == 200


@pytest.mark.parametrize(
    ("image", "present", "absent"),
    [
        (
            ROUTER,
            ("aiohttp", "uvloop", "grpc", "google.protobuf", "opentelemetry.sdk"),
            ("kopf", "kubernetes", "tritonclient", "numpy", "setuptools"),
        ),
        (OPERATOR, ("kopf", "kubernetes"), ("tritonclient", "numpy", "uvloop", "httptools")),
    ],
)
def test_each_image_carries_only_its_part(
    image: str, present: tuple[str, ...], absent: tuple[str, ...]
) -> None:
    check = (
        "import importlib.util as u, sys; "
        f"sys.exit(0 if all(u.find_spec(m) for m in {present!r}) "
        f"and not any(u.find_spec(m.split('.')[0]) and u.find_spec(m) for m in {absent!r}) else 1)"
    )
    done = podman("run", "--rm", *KSERVE_POD, "--entrypoint", "/opt/infergraph/bin/python",
                  image, "-c", check)  # fmt: skip
    assert done.returncode == 0, done.stderr
    wheels = podman("run", "--rm", "--user", "0", "--entrypoint", "/usr/bin/find", image,
                    "/", "-xdev", "-name", "*.whl",
                    "-not", "-path", "/usr/share/python-wheels/*")  # fmt: skip
    assert wheels.returncode == 0, wheels.stderr
    assert wheels.stdout == ""  # none left behind (the base's venv module keeps its own two)


def test_the_operator_image_runs_its_command_without_the_router() -> None:
    done = podman("run", "--rm", *KSERVE_POD, OPERATOR, "operator", "--help")
    assert done.returncode == 0, done.stderr
    done = podman("run", "--rm", *KSERVE_POD, OPERATOR, "--graph-json", "{}")
    assert done.returncode == 2
    assert "pip install 'infergraph[router]'" in done.stderr
