"""A real Kubernetes API server (and etcd) on loopback for the operator tests.

The binaries are built from the Go module proxy by tests/kube/build.sh (run by `make test`) into
~/.cache/infergraph/bin. The API server has no controllers: no garbage collection and no pods,
and Knative Service status changes only when a test patches it, as Knative would.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import config

from infergraph.predictors import processes
from infergraph.testing.cluster import (
    KUBE_VERSION,
    NAMESPACE,
    OPERATOR_USER,
    OTLP_ENDPOINT,
    Cluster,
    kubeconfig,
)
from infergraph.testing.paths import CACHE, REPO

ETCD_VERSION, KNATIVE_VERSION = "v3.6.16", "v0.50.0"


def _binary(name: str) -> Path:
    path = CACHE / "bin" / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: run `make test` (it runs tests/kube/build.sh) or that script",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("kube")
    etcd_bin = _binary(f"etcd-{ETCD_VERSION}")
    apiserver_bin = _binary(f"kube-apiserver-{KUBE_VERSION}")
    crd = CACHE / "crds" / f"knative-serving-{KNATIVE_VERSION}-service.yaml"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
        check=True,
        capture_output=True,
    )
    (work / "tokens.csv").write_text(
        'admin-token,admin,admin,"system:masters"\n'
        f'operator-token,{OPERATOR_USER},operator,"system:serviceaccounts,system:serviceaccounts:infergraph-system"\n'
    )
    client_port, peer_port, api_port = (processes.free_port() for _ in range(3))
    etcd = processes.ServerProcess(
        [
            str(etcd_bin),
            *("--data-dir", str(work / "etcd"), "--unsafe-no-fsync"),
            *("--listen-client-urls", f"http://127.0.0.1:{client_port}"),
            *("--advertise-client-urls", f"http://127.0.0.1:{client_port}"),
            *("--listen-peer-urls", f"http://127.0.0.1:{peer_port}"),
            *("--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}"),
            *("--initial-cluster", f"default=http://127.0.0.1:{peer_port}"),
        ],
        f"http://127.0.0.1:{client_port}/health",
        log_path=work / "etcd.log",
    )
    url = f"https://127.0.0.1:{api_port}"
    apiserver = processes.ServerProcess(
        [
            str(apiserver_bin),
            f"--etcd-servers=http://127.0.0.1:{client_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={work / 'certs'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={work / 'sa.pub'}",
            f"--service-account-signing-key-file={work / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--token-auth-file={work / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
        ],
        "",
        log_path=work / "apiserver.log",
    )
    print(f"starting etcd and kube-apiserver (logs in {work})", file=sys.stderr)
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    with etcd.start(timeout=30):
        apiserver.process = subprocess.Popen(
            apiserver.argv,
            stdout=open(work / "apiserver.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        admin = kubeconfig(work / "admin.kubeconfig", url, "admin-token")
        api = config.new_client_from_config(str(admin))  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 60
        while not _ready(url):
            if time.monotonic() > deadline or apiserver.process.poll() is not None:
                apiserver.stop()
                raise RuntimeError(f"kube-apiserver did not get ready; see {work}/apiserver.log")
            time.sleep(0.2)
        try:
            kube = Cluster(
                url, admin, kubeconfig(work / "operator.kubeconfig", url, "operator-token"), api
            )
            for path in [*sorted((REPO / "deploy" / "crds").glob("*.yaml")), crd]:
                kube.apply_file(path)
            kube.apply_file(REPO / "deploy" / "namespace.yaml")
            kube.apply_file(REPO / "deploy" / "rbac.yaml")
            kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            _wait_for_crds(kube)
            yield kube
        finally:
            apiserver.stop()


def _ready(url: str) -> bool:
    request = urllib.request.Request(
        f"{url}/readyz", headers={"Authorization": "Bearer admin-token"}
    )
    try:
        with urllib.request.urlopen(
            request, timeout=2, context=ssl._create_unverified_context()
        ) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait_for_crds(kube: Cluster) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            kube.dynamic.resources.get(api_version="infergraph.dev/v1alpha1", kind="InferenceGraph")
            kube.dynamic.resources.get(api_version="serving.knative.dev/v1", kind="Service")
            return
        except Exception:
            time.sleep(0.2)
    raise TimeoutError("CRDs not established")


@pytest.fixture(scope="session")
def operator_process(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The operator as a real process, with the RBAC identity of deploy/rbac.yaml."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = processes.child_env({"KUBECONFIG": str(cluster.operator_kubeconfig)})
    process = subprocess.Popen(
        [
            processes.CLI,
            "operator",
            "--namespace",
            NAMESPACE,
            "--router-image",
            "infergraph/router:test",
            "--otlp-endpoint",
            OTLP_ENDPOINT,
        ],
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd="/tmp",
    )
    time.sleep(2)
    if process.poll() is not None:
        pytest.fail(f"the operator exited at start; see {log}:\n{log.read_text()[-3000:]}")
    yield log
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
