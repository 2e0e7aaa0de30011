"""Hostile clients against real router processes, on both servers where the rule is theirs to
keep (``--server fast``, the default, and ``--server aiohttp``): large and trickled headers,
``Expect: 100-continue``, HTTP/0.9, hop-by-hop and non-ASCII headers, tenant listing, clients
that leave, and shutdown with requests in flight. Each case failed before the hardening work."""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from infergraph.predictors import processes
from infergraph.testing import hostile
from infergraph.testing.harness import Predictor, RouterFactory, graph, request, root_graph

SERVERS = ("fast", "aiohttp")


def one_step(p: Predictor, name: str = "a", **spec: object) -> str:
    return root_graph("Sequence", [{"serviceUrl": p.url(name)}], **spec)


def raw_headers(p: Predictor) -> list[list[str]]:
    headers: list[list[str]] = p.calls()[0]["raw_headers"]
    return headers


@pytest.mark.parametrize("server", SERVERS)
def test_a_16_kib_authorization_header_and_300_header_lines_are_served(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        one_step(p), extra=("--server", server), env={"PROPAGATE_HEADERS": "Authorization"}
    )
    token = b"Bearer " + b"j" * 16384
    many = {f"X-Extra-{i}": b"v" for i in range(300)}
    answer = hostile.exchange(port, hostile.post(headers={"Authorization": token, **many}))
    assert answer is not None
    assert answer.status == 200, answer.body
    assert ["Authorization", token.decode()] in raw_headers(p)


def test_headers_over_the_limit_get_431(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p), extra=("--max-header-bytes", "4096"))
    answer = hostile.exchange(port, hostile.post(headers={"X-Big": b"b" * 5000}))
    assert answer is not None
    assert answer.status == 431
    assert "4096" in json.loads(answer.body)["cause"]
    assert p.called() == []
    default = start_router(one_step(p))
    answer = hostile.exchange(default, hostile.post(headers={"X-Big": b"b" * (1024 * 1024)}))
    assert answer is not None
    assert answer.status == 431


def test_a_header_that_never_ends_gets_431_as_it_is_read(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    """llhttp reports a header only once it ends, so a header still arriving was not counted:
    the router read 2 MiB of one (with a cost growing with its square) and waited on, with no
    431. Now the bytes of a head are counted as they are read, as Go counts MaxHeaderBytes.
    The client sends 16 KiB pieces until an answer is there to read, as a client would."""
    port = start_router(one_step(clean_predictor), extra=("--max-header-bytes", "65536"))
    with hostile.connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        while sent < 2 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"b" * 16384)
            sent += 16384
            time.sleep(0.001)  # the router reads each piece on its own
        answer = hostile.read_response(sock)
    assert answer is not None, f"no answer after {sent} bytes of one header"
    assert answer.status == 431
    assert "65536" in json.loads(answer.body)["cause"]
    assert sent < 2 * 65536 + 16384
    assert clean_predictor.called() == []


@pytest.mark.parametrize("server", SERVERS)
def test_expect_100_continue_is_answered_before_the_body(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p), extra=("--server", server))
    body = b'{"x": 1}'
    with hostile.connect(port, timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        started = time.monotonic()
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        assert time.monotonic() - started < 0.5  # curl waits 1 s for it
        sock.sendall(body)
        answer = hostile.read_response(sock)
    assert answer is not None
    assert answer.status == 200
    assert json.loads(answer.body)["input"] == {"x": 1}


@pytest.mark.parametrize("server", SERVERS)
def test_a_declared_length_over_the_limit_is_413_before_the_body_is_sent(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p), extra=("--server", server, "--max-body-bytes", "1000"))
    with hostile.connect(port, timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n"
        )
        answer = hostile.read_response(sock)
    assert answer is not None
    assert answer.status == 413
    assert p.called() == []


@pytest.mark.parametrize("server", SERVERS)
def test_http_0_9_is_refused(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p), extra=("--server", server))
    with hostile.connect(port, timeout=5) as sock:
        sock.sendall(b"POST /\r\n\r\n")
        reply = sock.recv(1024)
    assert re.match(rb"HTTP/1\.1 400 ", reply), reply[:60]
    assert p.called() == []


@pytest.mark.parametrize("server", SERVERS)
def test_headers_the_connection_header_names_are_not_forwarded(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p), extra=("--server", server), env={"PROPAGATE_HEADERS": ""})
    headers = {"Connection": b"keep-alive, X-Hop", "X-Hop": b"secret", "X-Kept": b"yes"}
    answer = hostile.exchange(port, hostile.post(headers=headers))
    assert answer is not None
    assert answer.status == 200
    names = [name for name, _ in raw_headers(p)]
    assert "X-Kept" in names
    assert "X-Hop" not in names


@pytest.mark.parametrize("server", SERVERS)
def test_non_ascii_header_values_are_forwarded_byte_for_byte(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p), extra=("--server", server), env={"PROPAGATE_HEADERS": "X-"})
    sent = {"X-User": "José".encode(), "X-Price": "10 €".encode(), "X-Latin": b"caf\xe9"}
    answer = hostile.exchange(port, hostile.post(headers=sent))
    assert answer is not None
    assert answer.status == 200, answer.body
    received = {name: value.encode("latin-1") for name, value in raw_headers(p)}
    assert {name: received[name] for name in sent} == sent


@pytest.mark.parametrize("server", SERVERS)
def test_a_404_does_not_list_the_graphs_served(
    server: str, clean_predictor: Predictor, start_router: RouterFactory, tmp_path: Path
) -> None:
    p = clean_predictor
    for name in ("tenant-alpha", "tenant-beta"):
        (tmp_path / f"{name}.json").write_text(one_step(p))
    port = start_router(source=("--graph-dir", str(tmp_path)), extra=("--server", server))
    for path in ("/graphs/nope", "/"):
        answer = request(port, {"x": 1}, path=path)
        assert answer.status == 404
        assert b"tenant" not in answer.body, answer.body
    listing = start_router(
        source=("--graph-dir", str(tmp_path)), extra=("--server", server, "--list-graphs")
    )
    assert b"tenant-alpha" in request(listing, {"x": 1}, path="/graphs/nope").body


def _metrics(port: int) -> str:
    return request(port, b"", path="/metrics", method="GET").body.decode()


@pytest.mark.parametrize("server", SERVERS)
def test_a_client_that_leaves_is_counted_as_499_not_as_a_server_error(
    server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph("Sequence", [{"serviceUrl": p.url("slow", delay=5)}]),
        extra=("--server", server),
    )
    with hostile.connect(port) as sock:
        sock.sendall(hostile.post())
        deadline = time.monotonic() + 5
        while not p.called() and time.monotonic() < deadline:
            time.sleep(0.02)
    deadline = time.monotonic() + 5
    while 'code="499"' not in _metrics(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    page = _metrics(port)
    assert re.search(r'infergraph_requests_total\{code="499",graph="[^"]+"\} 1\.0', page), page
    assert 'cause="client_closed"' in page
    assert 'code="500"' not in page


def test_trickled_headers_are_cut_at_server_read(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p, routerTimeouts={"serverRead": 1, "serverIdle": 30}))
    with hostile.connect(port) as sock:
        took = hostile.trickle(sock, hostile.post(), interval=0.1, limit=5)
    assert took is not None, "a slowloris client was still connected after 5 s"
    assert 0.9 <= took < 2.5
    with hostile.connect(port) as silent:  # a connection that never sends a byte
        took = hostile.closed_within(silent, 5)
    assert took is not None
    assert 0.9 <= took < 2.5
    assert p.called() == []


def test_a_kept_alive_connection_may_idle_for_server_idle(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p, routerTimeouts={"serverRead": 1, "serverIdle": 2}))
    with hostile.connect(port) as sock:
        sock.sendall(hostile.post())
        answer = hostile.read_response(sock)
        assert answer is not None
        assert answer.status == 200
        took = hostile.closed_within(sock, 5)  # idle after a response: serverIdle, not serverRead
    assert took is not None
    assert 1.8 <= took < 3.5


def test_pipelined_requests_are_answered_in_order(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(one_step(p))
    bodies = [b'{"n": %d}' % i for i in range(5)]
    with hostile.connect(port) as sock:
        sock.sendall(b"".join(hostile.post(body=body) for body in bodies))
        reader = hostile.ResponseReader(sock)  # the answers may share a segment
        answers = [reader.read() for _ in bodies]
    assert [json.loads(a.body)["input"]["n"] for a in answers if a is not None] == list(range(5))


@pytest.mark.parametrize("server", SERVERS)
def test_shutdown_after_the_drain_lets_in_flight_requests_finish(
    server: str, clean_predictor: Predictor, tmp_path: Path
) -> None:
    """SIGTERM with a 5-s request in flight and --drain-seconds 0.5: the request still gets its
    200 (it used to get an empty reply once the drain and a 1-s grace were over), new
    connections are refused after the drain, and the process exits 0 once the request is done."""
    p = clean_predictor
    port = processes.free_port()
    spec = graph(
        {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": p.url("slow", delay=5)}]}}
    )
    router = processes.router(
        port,
        "--graph-json",
        spec,
        extra=("--drain-seconds", "0.5", "--server", server),
        log_path=tmp_path / "router.log",
    )
    with router:
        results: list[int] = []
        in_flight = threading.Thread(target=lambda: results.append(request(port, {"x": 1}).status))
        in_flight.start()
        deadline = time.monotonic() + 5
        while not p.called() and time.monotonic() < deadline:
            time.sleep(0.02)
        idle = hostile.connect(port)  # an idle keep-alive connection is closed at shutdown
        router.signal(signal.SIGTERM)
        time.sleep(2.0)  # past the drain and the old 1-s grace, before the request is done
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert hostile.closed_within(idle, 1) is not None
        idle.close()
        in_flight.join(10)
        assert results == [200]
        assert router.process is not None
        assert router.process.wait(10) == 0
