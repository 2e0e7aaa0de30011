"""KServe's router contract, black-box: real router processes, a real predictor, plain HTTP."""

from __future__ import annotations

import re
import socket
import time

import pytest

from infergraph.testing.harness import Predictor, RouterFactory, graph, request, root_graph

ERROR = "Failed to process request"


def test_case1_sequence_maps_predictions_and_chains_response(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Sequence",
            [
                {"serviceUrl": p.url("m1"), "mapPredictionsToInstances": True},
                {"serviceUrl": p.url("m2"), "data": "$response"},
            ],
        )
    )
    response = request(port, {"predictions": ["a", "b"]})
    assert response.status == 200
    assert p.bodies("m1") == [{"instances": ["a", "b"]}]
    m1_body = {"step": "m1", "input": {"instances": ["a", "b"]}}
    assert p.bodies("m2") == [m1_body]
    assert response.json() == {"step": "m2", "input": m1_body}
    assert response.headers["Content-Type"].startswith("application/json")


def test_case2_ensemble(clean_predictor: Predictor, start_router: RouterFactory) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Ensemble",
            [
                {"name": "model1", "serviceUrl": p.url("m1")},
                {"name": "model2", "serviceUrl": p.url("m2")},
            ],
        )
    )
    response = request(port, {"x": 1})
    assert response.status == 200
    assert response.json() == {
        "model1": {"step": "m1", "input": {"x": 1}},
        "model2": {"step": "m2", "input": {"x": 1}},
    }


def test_case3_switch_then_conditional_ensemble(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    dog = '{"predictions": [{"label": "dog"}]}'
    port = start_router(
        graph(
            {
                "root": {
                    "routerType": "Sequence",
                    "steps": [
                        {"name": "pick", "nodeName": "pick"},
                        {
                            "name": "both",
                            "nodeName": "both",
                            "condition": 'predictions.#(label=="dog")',
                        },
                    ],
                },
                "pick": {
                    "routerType": "Switch",
                    "steps": [
                        {"serviceUrl": p.url("m1"), "condition": 'instances.#(modelId=="1")'},
                        {
                            "serviceUrl": p.url("m2", body=dog),
                            "condition": 'instances.#(modelId=="2")',
                        },
                    ],
                },
                "both": {
                    "routerType": "Ensemble",
                    "steps": [
                        {"name": "e1", "serviceUrl": p.url("e1")},
                        {"name": "e2", "serviceUrl": p.url("e2")},
                    ],
                },
            }
        )
    )
    body = {"instances": [{"modelId": "2"}]}
    response = request(port, body)
    assert response.status == 200
    assert "m1" not in p.called()
    assert response.json() == {
        "e1": {"step": "e1", "input": body},
        "e2": {"step": "e2", "input": body},
    }


def test_case4_unmet_condition_returns_previous_body(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Sequence",
            [
                {"serviceUrl": p.url("m1")},
                {"serviceUrl": p.url("m2"), "condition": "predictions"},
            ],
        )
    )
    response = request(port, {"x": 1})
    assert (response.status, response.json()) == (200, {"step": "m1", "input": {"x": 1}})
    assert p.called() == ["m1"]


HEADERS = {
    "Test-Header-Key": "k",
    "Test-Header-Other": "o",
    "Authorization": "Bearer t",
    "X-Unrelated": "u",
}


@pytest.mark.parametrize(
    ("setting", "forwarded"),
    [
        (None, set()),
        ("Test-Header-Key", {"Test-Header-Key"}),
        ("Test-Header-Key,Authorization", {"Test-Header-Key", "Authorization"}),
        ("Test-Header-*,Auth*", {"Test-Header-Key", "Test-Header-Other", "Authorization"}),
        ("[bad,Auth*", {"Authorization"}),
    ],
)
def test_case5_header_propagation(
    setting: str | None,
    forwarded: set[str],
    clean_predictor: Predictor,
    start_router: RouterFactory,
) -> None:
    p = clean_predictor
    env = {"PROPAGATE_HEADERS": setting} if setting is not None else {}
    port = start_router(
        graph(
            {
                "root": {"routerType": "Sequence", "steps": [{"nodeName": "fan"}]},
                "fan": {
                    "routerType": "Ensemble",
                    "steps": [{"name": "a", "serviceUrl": p.url("a")}],
                },
            }
        ),
        env=env,
    )
    assert request(port, {"x": 1}, headers={k.lower(): v for k, v in HEADERS.items()}).status == 200
    received = p.calls()[0]["headers"]
    assert {name for name in received if name in HEADERS} == forwarded
    for name in forwarded:
        assert received[name] == HEADERS[name]
    assert received["Content-Type"] == "application/json"


def test_case6_malformed_step_url_is_500_with_the_parse_error(start_router: RouterFactory) -> None:
    port = start_router(root_graph("Sequence", [{"serviceUrl": "http://x.{$domain}/p"}]))
    response = request(port, {"x": 1})
    assert response.status == 500
    body = response.json()
    assert body["error"] == ERROR
    assert "http://x.{$domain}/p" in body["cause"]
    assert "invalid host" in body["cause"]


def test_case7_graph_slower_than_server_write_gets_its_connection_closed(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    spec = root_graph(
        "Sequence", [{"serviceUrl": p.url("slow", delay=0.5)}], routerTimeouts={"serverWrite": 0.2}
    )
    port = start_router(spec)
    started = time.monotonic()
    with pytest.raises((ConnectionError, OSError)):
        request(port, {"x": 1})
    assert time.monotonic() - started < 0.5

    port = start_router(
        root_graph(
            "Sequence",
            [{"serviceUrl": p.url("slow", delay=0.1)}],
            routerTimeouts={"serverWrite": 2},
        )
    )
    assert request(port, {"x": 1}).status == 200


def test_service_client_timeout_is_500(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Sequence",
            [{"serviceUrl": p.url("slow", delay=2)}],
            routerTimeouts={"serviceClient": 0.2},
        )
    )
    response = request(port, {"x": 1})
    assert response.status == 500
    assert "deadline exceeded" in response.json()["cause"]


def test_case8_splitter_always_picks_a_route(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Splitter",
            [
                {"serviceUrl": p.url("a"), "weight": 30},
                {"serviceUrl": p.url("b"), "weight": 0},
                {"serviceUrl": p.url("c"), "weight": 70},
            ],
        )
    )
    statuses = {request(port, {"i": i}).status for i in range(100)}
    assert statuses == {200}
    called = p.called()
    assert len(called) == 100
    assert set(called) == {"a", "c"}


def _case9_graph(p: Predictor, **overrides: object) -> dict[str, object]:
    return {
        "root": {"routerType": "Sequence", "steps": overrides.get("root_steps")},
        **overrides.get("extra_nodes", {}),  # type: ignore[dict-item]
    }


@pytest.mark.parametrize(
    ("name", "steps", "status", "called"),
    [
        ("soft failure last", [("ok", 200, "Soft"), ("nf", 404, "Soft")], 404, ["ok", "nf"]),
        (
            "soft failure then success",
            [("nf", 404, "Soft"), ("ok", 200, "Soft")],
            200,
            ["nf", "ok"],
        ),
        ("hard failure stops", [("nf", 404, "Hard"), ("ok", 200, "Soft")], 404, ["nf"]),
    ],
)
def test_case9_sequences_with_soft_and_hard_steps(
    name: str,
    steps: list[tuple[str, int, str]],
    status: int,
    called: list[str],
    clean_predictor: Predictor,
    start_router: RouterFactory,
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Sequence",
            [
                {"serviceUrl": p.url(step, status=code), "dependency": dep}
                for step, code, dep in steps
            ],
        )
    )
    assert request(port, {"x": 1}).status == status
    assert p.called() == called


def test_case9_root_switch_routes_on_decision_picker(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Switch",
            [
                {
                    "serviceUrl": p.url("err", status=404),
                    "condition": "[@this].#(decision_picker==ERROR)",
                },
                {"serviceUrl": p.url("ok"), "condition": "[@this].#(decision_picker==OK)"},
            ],
        )
    )
    assert request(port, {"decision_picker": "OK"}).status == 200
    assert request(port, {"decision_picker": "ERROR"}).status == 404
    miss = request(port, {"decision_picker": "OTHER"})
    assert miss.status == 404
    assert miss.json() == {
        "error": ERROR,
        "cause": "None of the routes matched with the switch condition",
    }
    assert p.called() == ["ok", "err"]


@pytest.mark.parametrize(("dependency", "status"), [("Soft", 200), ("Hard", 404)])
@pytest.mark.parametrize("nested", ["Switch", "Splitter"])
def test_case9_nested_switch_and_splitter_follow_hard_soft(
    dependency: str,
    status: int,
    nested: str,
    clean_predictor: Predictor,
    start_router: RouterFactory,
) -> None:
    p = clean_predictor
    step = {"serviceUrl": p.url("nf", status=404)}
    step.update({"condition": "x"} if nested == "Switch" else {"weight": 100})  # type: ignore[dict-item]
    port = start_router(
        graph(
            {
                "root": {
                    "routerType": "Sequence",
                    "steps": [
                        {"nodeName": "inner", "dependency": dependency},
                        {"serviceUrl": p.url("after")},
                    ],
                },
                "inner": {"routerType": nested, "steps": [step]},
            }
        )
    )
    response = request(port, {"x": 1})
    assert response.status == status
    assert p.called() == (["nf", "after"] if dependency == "Soft" else ["nf"])


def test_case9_nested_switch_without_match_is_500(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        graph(
            {
                "root": {"routerType": "Sequence", "steps": [{"nodeName": "inner"}]},
                "inner": {
                    "routerType": "Switch",
                    "steps": [{"serviceUrl": p.url("a"), "condition": "nothere"}],
                },
            }
        )
    )
    response = request(port, {"x": 1})
    assert response.status == 500
    assert response.json()["cause"] == "None of the routes matched with the switch condition"


@pytest.mark.parametrize(("dependency", "status"), [("Soft", 200), ("Hard", 404)])
def test_case9_ensemble_soft_and_hard_failures(
    dependency: str, status: int, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph(
            "Ensemble",
            [
                {"name": "ok", "serviceUrl": p.url("ok")},
                {
                    "name": "nf",
                    "serviceUrl": p.url("nf", status=404),
                    "dependency": dependency,
                },
            ],
        )
    )
    response = request(port, {"x": 1})
    assert response.status == status
    nf_body = {"step": "nf", "input": {"x": 1}}
    if dependency == "Soft":
        assert response.json() == {"ok": {"step": "ok", "input": {"x": 1}}, "nf": nf_body}
    else:
        assert response.json() == nf_body


def test_connection_refused_is_500_and_router_survives(start_router: RouterFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    port = start_router(root_graph("Sequence", [{"serviceUrl": f"http://127.0.0.1:{dead}/x"}]))
    for _ in range(3):
        response = request(port, {"x": 1})
        assert response.status == 500
        assert response.json()["error"] == ERROR
        assert f"127.0.0.1:{dead}" in response.json()["cause"]
    assert request(port, path="/readyz", method="GET").status == 200


def test_readyz_healthz_and_any_path_or_method_runs_the_graph(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(root_graph("Sequence", [{"serviceUrl": p.url("a")}]))
    ready = request(port, b"", path="/readyz", method="GET")
    assert (ready.status, ready.body) == (200, b"")
    assert request(port, b"", path="/healthz", method="GET").status == 200
    assert (
        request(port, {"x": 1}, path="/v1/models/anything:predict?x=1", method="PUT").status == 200
    )
    assert p.calls()[0]["method"] == "POST"


def test_non_json_final_body_keeps_a_sensible_content_type(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph("Sequence", [{"serviceUrl": p.url("t", body="plain words", ctype="text/plain")}])
    )
    response = request(port, {"x": 1})
    assert response.body == b"plain words"
    assert response.headers["Content-Type"].startswith("text/plain")


def test_body_over_the_limit_is_413(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph("Sequence", [{"serviceUrl": p.url("a")}]),
        extra=("--max-body-bytes", "1000"),
    )
    response = request(port, b'{"x": "' + b"a" * 2000 + b'"}')
    assert response.status == 413
    assert "limit" in response.json()["cause"]
    assert p.called() == []
    assert request(port, {"x": 1}).status == 200


def test_chunked_body_over_the_limit_is_413(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph("Sequence", [{"serviceUrl": p.url("a")}]),
        extra=("--max-body-bytes", "1000"),
    )
    chunk = b'{"x": "' + b"a" * 3000 + b'"}'
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
        reply = client.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
    assert p.called() == []


def test_slow_request_body_past_server_read_closes_the_connection(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        root_graph("Sequence", [{"serviceUrl": p.url("a")}], routerTimeouts={"serverRead": 0.3})
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}")
        started = time.monotonic()
        assert client.recv(1024) == b""  # closed without an answer
        assert time.monotonic() - started < 2
    assert p.called() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        # Over the 1 MiB of headers Go's net/http (and the router) accepts by default.
        b"POST / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 1_100_000 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /" + b"%" * 20_000 + b" HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_http_gets_a_4xx_or_a_closed_connection_and_the_router_survives(
    raw: bytes, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(root_graph("Sequence", [{"serviceUrl": p.url("a")}]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        try:
            client.sendall(raw)
            answer = client.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:80]
    assert p.called() == []
    assert request(port, {"x": 1}).status == 200


@pytest.mark.parametrize(
    "body", [b"", b"\xff\xfe binary", b"[1, 2]", b'{"unterminated": ', b"null"]
)
def test_any_body_through_switch_and_ensemble_gets_a_clean_answer(
    body: bytes, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        graph(
            {
                "root": {
                    "routerType": "Sequence",
                    "steps": [{"nodeName": "fan"}, {"nodeName": "pick", "data": "$response"}],
                },
                "fan": {
                    "routerType": "Ensemble",
                    "steps": [{"name": "raw", "serviceUrl": p.url("e", body="{}")}],
                },
                "pick": {
                    "routerType": "Switch",
                    "steps": [{"serviceUrl": p.url("s"), "condition": "raw"}],
                },
            }
        )
    )
    response = request(port, body)
    assert response.status == 200
    assert response.json() == {"step": "s", "input": {"raw": {}}}
