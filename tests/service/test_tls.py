"""TLS at the edge of a real router process, with real clients: curl and openssl s_client on
TLS 1.2 and 1.3, TLS 1.1 and weak suites refused, certificate rotation under traffic with no
failed request, mutual TLS (a good certificate, one from another CA, none), gRPC over TLS with
tritonclient, and https steps verified against --upstream-ca, with a client certificate."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from infergraph.predictors import processes
from infergraph.testing.certs import Authority, Pair
from infergraph.testing.harness import Predictor, RouterFactory, graph, request

ANSWER = b'"step":"s"'


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "ca", "ca")


def tls_context(ca: Authority, client: Pair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def https_post(port: int, context: ssl.SSLContext, body: bytes = b"{}") -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("POST", "/", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class TlsRouters:
    """Starts routers that serve TLS; each is probed over TLS before the test goes on."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[processes.ServerProcess] = []

    def start(self, spec: str, *extra: str, probe_context: ssl.SSLContext) -> int:
        port = processes.free_port()
        argv = [processes.CLI, "router", "--graph-json", spec, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--drain-seconds", "0", *extra]

        def probe(url: str) -> bool:
            try:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=probe_context, timeout=2
                )
                connection.request("GET", "/readyz")
                return connection.getresponse().status == 200
            except (OSError, ssl.SSLError):
                return False

        server = processes.ServerProcess(
            argv, "", log_path=self.tmp_path / f"router-{port}.log", probe=probe
        )
        self.started.append(server)
        server.start()
        return port


@pytest.fixture
def tls_routers(tmp_path: Path) -> Iterator[TlsRouters]:
    routers = TlsRouters(tmp_path)
    yield routers
    for server in routers.started:
        server.stop()


def one_step(url: str) -> str:
    return graph({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url}]}})


def test_tls_12_and_13_served_and_11_and_weak_suites_refused(
    ca: Authority, clean_predictor: Predictor, tls_routers: TlsRouters
) -> None:
    pair = ca.issue("router")
    port = tls_routers.start(
        one_step(clean_predictor.url("s")),
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
        probe_context=tls_context(ca),
    )  # fmt: skip
    for version in ("--tlsv1.2 --tls-max 1.2", "--tlsv1.3"):
        done = subprocess.run(
            ["curl", "-sS", "--cacert", str(ca.cert), *version.split(), "-d", "{}",
             "-H", "Content-Type: application/json", f"https://127.0.0.1:{port}/"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert ANSWER in done.stdout

    def s_client(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca.cert),
             *args],
            input=b"", capture_output=True, timeout=30, check=False,
        )  # fmt: skip

    for version in ("-tls1_2", "-tls1_3"):
        done = s_client(version)
        assert b"Verify return code: 0 (ok)" in done.stdout, done.stdout + done.stderr
    # The client side allows TLS 1.1 (security level 0): the router is what refuses it.
    old = s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0
    assert b"Cipher is (NONE)" in old.stdout or b"alert" in old.stderr
    # TLS 1.2 without forward secrecy, or with CBC: no shared suite.
    for weak in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"):
        done = s_client("-tls1_2", "-cipher", weak)
        assert done.returncode != 0, weak


def test_a_rotated_certificate_is_used_without_a_failed_request(
    ca: Authority, clean_predictor: Predictor, tls_routers: TlsRouters, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    first = ca.issue("first")
    shutil.copy(first.cert, live / "tls.crt")
    shutil.copy(first.key, live / "tls.key")
    port = tls_routers.start(
        one_step(clean_predictor.url("s")),
        "--tls-cert", str(live / "tls.crt"), "--tls-key", str(live / "tls.key"),
        probe_context=tls_context(ca),
    )  # fmt: skip
    context = tls_context(ca)
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal answered
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        while not stop.is_set():
            try:
                status, body = https_post(port, context)  # a new connection each time
                kept.request("POST", "/", b"{}", {"Content-Type": "application/json"})
                reused = kept.getresponse()
                reused.read()
                if status != 200 or reused.status != 200 or ANSWER not in body:
                    failures.append(f"{status}/{reused.status}")
                answered += 1
            except (OSError, ssl.SSLError) as error:
                failures.append(repr(error))
        kept.close()

    def served_name() -> str:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            peer: Any = tls.getpeercert()
            subject = dict(x[0] for x in peer["subject"])
            return str(subject["commonName"])

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        assert served_name() == "first"
        second = ca.issue("second")
        # As cert-manager does: new files, moved into place.
        shutil.copy(second.key, live / "tls.key.new")
        shutil.copy(second.cert, live / "tls.crt.new")
        (live / "tls.key.new").replace(live / "tls.key")
        (live / "tls.crt.new").replace(live / "tls.crt")
        deadline = time.monotonic() + 10
        while served_name() != "second" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served_name() == "second"
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(20)
    assert failures == []
    assert answered > 10


def test_mutual_tls(
    ca: Authority, clean_predictor: Predictor, tls_routers: TlsRouters, tmp_path: Path
) -> None:
    pair = ca.issue("router")
    client = ca.issue("client", server=False)
    stranger = Authority(tmp_path / "other", "other").issue("client", server=False)
    port = tls_routers.start(
        one_step(clean_predictor.url("s")),
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-client-ca", str(ca.cert),
        probe_context=tls_context(ca, client),
    )  # fmt: skip
    status, body = https_post(port, tls_context(ca, client))
    assert (status, ANSWER in body) == (200, True)
    for refused in (tls_context(ca, stranger), tls_context(ca)):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            https_post(port, refused)


def test_grpc_ingress_over_tls(
    ca: Authority, clean_predictor: Predictor, tls_routers: TlsRouters
) -> None:
    pair = ca.issue("router")
    client = ca.issue("client", server=False)
    grpc_port = processes.free_port()
    spec = one_step(clean_predictor.url("s"))
    tls_routers.start(
        spec,
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-client-ca", str(ca.cert),
        "--grpc-port", str(grpc_port),
        probe_context=tls_context(ca, client),
    )  # fmt: skip
    with triton.InferenceServerClient(
        f"127.0.0.1:{grpc_port}",
        ssl=True,
        root_certificates=str(ca.cert),
        private_key=str(client.key),
        certificate_chain=str(client.cert),
    ) as c:
        result = c.infer("g", [])
        assert ANSWER in bytes(result.as_numpy("answer")[0])
    # Without a client certificate the handshake fails: UNAVAILABLE, in gRPC's words.
    with triton.InferenceServerClient(
        f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=str(ca.cert)
    ) as c:
        with pytest.raises(InferenceServerException) as raised:
            c.infer("g", [], client_timeout=5)
        assert raised.value.status() == "StatusCode.UNAVAILABLE"


def test_https_steps_verify_their_server_and_can_present_a_certificate(
    ca: Authority, clean_predictor: Predictor, tls_routers: TlsRouters, start_router: RouterFactory
) -> None:
    """A TLS router (requiring client certificates) stands for a model server over HTTPS."""
    pair = ca.issue("model-server")
    client = ca.issue("router", server=False)
    upstream = tls_routers.start(
        one_step(clean_predictor.url("s")),
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-client-ca", str(ca.cert),
        probe_context=tls_context(ca, client),
    )  # fmt: skip
    spec = one_step(f"https://127.0.0.1:{upstream}/")
    verified = start_router(
        spec,
        extra=("--upstream-ca", str(ca.cert), "--upstream-client-cert", str(client.cert),
               "--upstream-client-key", str(client.key)),
    )  # fmt: skip
    answer = request(verified, {})
    assert answer.status == 200
    assert ANSWER in answer.body
    unverified = start_router(spec)  # the system's trust store does not know our CA
    failed = request(unverified, {})
    assert failed.status == 500
    assert "certificate" in failed.json()["cause"].lower()
