"""Client bodies that used to end in a 500 (or kill the process): the KServe answer, or a 4xx
that says why, and valid JSON (however deep, however odd) simply works.

Each test names what the engine did before: an exception other than ``GraphRequestError``
became the service's 500 "internal error in the router"; a segfault ended the process.
"""

from __future__ import annotations

import gc
from typing import Any

import orjson
import pytest

from infergraph.router.engine.errors import (
    BadRequest,
    EnsembleMergeError,
    InvalidResponse,
    NestedNoRouteMatched,
    NoRouteMatched,
    RequestMappingError,
)
from infergraph.testing.fakes import FakeTransport, plan, reply, run, url

STRAY = b'{"note":"caf\xe9 \xff","instances":[{"modelId":"2","name":"x\xe2\x82"}]}'


def nested(levels: int, inner: bytes = b"1") -> bytes:
    """``levels`` arrays around ``inner``."""
    return b"[" * levels + inner + b"]" * levels


def sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Sequence", "steps": list(steps)}}


def switch(*conditions: str) -> dict[str, Any]:
    steps = [{"serviceUrl": url(f"m{i}"), "condition": c} for i, c in enumerate(conditions)]
    return {"root": {"routerType": "Switch", "steps": steps}}


def sent(fake: FakeTransport, name: str) -> list[bytes]:
    return [c.body for c in fake.calls if c.target.url == url(name)]


# --- bytes that are not UTF-8 ------------------------------------------------------------------
# Go's gjson reads bytes: such a body is valid and its paths exist. pygjson needs text and raised
# UnicodeDecodeError (500) for every GJSON condition, matching or not.


async def test_gjson_switch_routes_a_body_with_stray_bytes(fake: FakeTransport) -> None:
    # Before: UnicodeDecodeError -> 500.
    graph = plan(switch('instances.#(modelId=="3")', 'instances.#(modelId=="2")', "instances"))
    result = await run(graph, fake, None, raw=STRAY)
    assert result.status == 200
    assert fake.called() == ["m1"]
    assert sent(fake, "m1") == [STRAY]  # forwarded byte for byte


async def test_gjson_wildcard_sees_one_rune_per_stray_byte(fake: FakeTransport) -> None:
    # Before: UnicodeDecodeError -> 500. Go's pattern matcher decodes "x\xe2\x82" as x + two
    # RuneErrors, so "x*" matches it.
    graph = plan(switch('instances.#(name%"y*")', 'instances.#(name%"x*")'))
    await run(graph, fake, None, raw=STRAY)
    assert fake.called() == ["m1"]


async def test_gjson_switch_with_stray_bytes_and_no_match_is_kserves_404(
    fake: FakeTransport,
) -> None:
    # Before: UnicodeDecodeError -> 500.
    with pytest.raises(NoRouteMatched) as caught:
        await run(plan(switch("predictions", 'instances.#(modelId=="9")')), fake, None, raw=STRAY)
    assert caught.value.status == 404


async def test_nested_gjson_switch_with_stray_bytes_and_no_match_is_kserves_500(
    fake: FakeTransport,
) -> None:
    # Before: UnicodeDecodeError -> 500 "internal error"; now KServe's nested no-match.
    graph = plan(
        {
            "root": {"routerType": "Sequence", "steps": [{"nodeName": "pick"}]},
            "pick": {
                "routerType": "Switch",
                "steps": [{"serviceUrl": url("a"), "condition": "predictions"}],
            },
        }
    )
    with pytest.raises(NestedNoRouteMatched):
        await run(graph, fake, None, raw=STRAY)


async def test_sequence_gjson_condition_reads_a_response_with_stray_bytes(
    fake: FakeTransport,
) -> None:
    # Before: UnicodeDecodeError -> 500.
    fake.script[url("a")] = reply(raw=b'{"label":"d\xf6g","score":1}')
    graph = plan(
        sequence(
            {"serviceUrl": url("a")},
            {"serviceUrl": url("b"), "condition": "score", "data": "$response"},
        )
    )
    result = await run(graph, fake, {"x": 1})
    assert fake.called() == ["a", "b"]
    assert result.body == b'{"label":"d\xf6g","score":1}'


async def test_jsonpath_switch_on_stray_bytes_is_a_400_with_the_reason(
    fake: FakeTransport,
) -> None:
    # Before: 404 "None of the routes matched" (the condition silently read nothing).
    with pytest.raises(BadRequest, match=r"not valid UTF-8 \(byte 0xe9 at offset 12\)") as caught:
        await run(plan(switch("$.instances")), fake, None, raw=STRAY)
    assert caught.value.status == 400
    assert fake.calls == []


async def test_jsonpath_sequence_condition_on_stray_bytes_is_an_invalid_response(
    fake: FakeTransport,
) -> None:
    # Before: the condition read nothing, so the sequence stopped with a 200.
    fake.script[url("a")] = reply(raw=b'{"label":"d\xf6g"}')
    graph = plan(
        sequence({"serviceUrl": url("a")}, {"serviceUrl": url("b"), "condition": "$.label"})
    )
    with pytest.raises(InvalidResponse):
        await run(graph, fake, {"x": 1})


async def test_data_mapping_on_stray_bytes_is_a_400_that_says_so(fake: FakeTransport) -> None:
    # Before: 400 "the request is not JSON", without the reason.
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request.instances"}))
    with pytest.raises(RequestMappingError, match=r"not valid UTF-8 \(byte 0xe9 at offset 12\)"):
        await run(graph, fake, None, raw=STRAY)
    assert fake.calls == []


async def test_map_predictions_reads_stray_bytes_as_go_does(fake: FakeTransport) -> None:
    # Before: the input was forwarded unchanged. KServe's json.Unmarshal writes one U+FFFD per
    # byte that is not UTF-8 (\xe2\x82 is two of them; errors="replace" would make one).
    graph = plan(sequence({"serviceUrl": url("m"), "mapPredictionsToInstances": True}))
    await run(graph, fake, None, raw=b'{"predictions":["x\xe2\x82","\xff"],"id":"q"}')
    assert fake.bodies("m") == [{"instances": ["x\ufffd\ufffd", "\ufffd"]}]


# --- nesting -------------------------------------------------------------------------------
# orjson decodes 1024 levels but encodes about 254; Go's encoding/json handles 10,000.


@pytest.mark.parametrize("levels", [255, 1000, 1023, 10_000, 20_000])
async def test_data_selection_of_a_deep_value_is_forwarded_intact(
    levels: int, fake: FakeTransport
) -> None:
    # Before: TypeError "Recursion limit reached" (500) from 254 levels, 400 "not JSON" past 1023.
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request.instances"}))
    result = await run(graph, fake, None, raw=b'{"instances":' + nested(levels) + b"}")
    assert result.status == 200
    assert sent(fake, "m") == [nested(levels)]


@pytest.mark.parametrize("levels", [300, 1023, 10_000])
async def test_map_predictions_of_a_deep_document(levels: int, fake: FakeTransport) -> None:
    # Before: TypeError (500) from 254 levels; past 1023 the input went unchanged.
    graph = plan(sequence({"serviceUrl": url("m"), "mapPredictionsToInstances": True}))
    body = b'{"predictions":[' + nested(levels, b'{"a":true}') + b'],"x":0}'
    await run(graph, fake, None, raw=body)
    assert sent(fake, "m") == [b'{"instances":[' + nested(levels, b'{"a":true}') + b"]}"]


async def test_request_template_around_a_deep_value(fake: FakeTransport) -> None:
    # Before: TypeError (500).
    graph = plan(sequence({"serviceUrl": url("m"), "request": {"x": "$request.rows", "n": 1}}))
    await run(graph, fake, None, raw=b'{"rows":' + nested(2000) + b"}")
    assert sent(fake, "m") == [b'{"x":' + nested(2000) + b',"n":1}']


async def test_switch_routes_a_body_as_deep_as_gjson_conditions_read(
    fake: FakeTransport,
) -> None:
    # 10,000 levels: validated by the iterative scanner (pygjson would use 320 KiB of stack).
    body = b'{"model":"b","deep":' + nested(9_999) + b"}"
    graph = plan(switch('[@this].#(model=="a")', '[@this].#(model=="b")'))
    await run(graph, fake, None, raw=body)
    assert fake.called() == ["m1"]


async def test_a_gjson_condition_refuses_a_body_deeper_than_it_reads(fake: FakeTransport) -> None:
    # gjson's time grows with the square of the depth it walks: this body (100,000 levels,
    # 0.9 MB, under the engine's own limit) took 20 s of event loop for its one condition.
    body = b'{"predictions":[' * 50_000 + b"1" + b"]}" * 50_000
    graph = plan(switch('predictions.#(label=="dog")'))
    with pytest.raises(BadRequest, match="nests over 10000 levels deep, too deep") as caught:
        await run(graph, fake, None, raw=body)
    assert caught.value.status == 400
    assert fake.called() == []


async def test_switch_refuses_a_body_too_deep_to_read(fake: FakeTransport) -> None:
    # Before: pygjson.validate overflowed the native stack: a segfault killed the process.
    body = b'{"model":"b","deep":' + nested(300_000) + b"}"
    with pytest.raises(BadRequest, match="nests 300001 levels deep") as caught:
        await run(plan(switch('[@this].#(model=="b")')), fake, None, raw=body)
    assert caught.value.status == 400


async def test_ensemble_of_echoed_deep_bodies(fake: FakeTransport) -> None:
    # The fake models echo their input. 20,000 levels merge; 300,000 (before: a segfault) are
    # a body the ensemble cannot read, KServe's 500 for a branch that is not an object.
    graph = plan(
        {
            "root": {
                "routerType": "Ensemble",
                "steps": [{"name": "a", "serviceUrl": url("a")}, {"serviceUrl": url("b")}],
            }
        }
    )
    shallow_enough = b'{"deep":' + nested(20_000) + b"}"
    result = await run(graph, fake, None, raw=shallow_enough)
    assert result.body == b'{"a":' + shallow_enough + b',"1":' + shallow_enough + b"}"
    with pytest.raises(EnsembleMergeError) as caught:
        await run(graph, fake, None, raw=b'{"deep":' + nested(300_000) + b"}")
    assert caught.value.status == 500


async def test_data_mapping_of_a_body_too_deep_to_read_is_a_400(fake: FakeTransport) -> None:
    # Before: 400 "not JSON" (orjson's depth limit), now with the depth.
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request.instances"}))
    body = b'{"instances":' + nested(150_000) + b"}"
    with pytest.raises(RequestMappingError, match="nests 150001 levels deep"):
        await run(graph, fake, None, raw=body)


async def test_recursive_descent_through_a_deep_document(fake: FakeTransport) -> None:
    # Before: 400 "not JSON" (orjson's depth limit); jsonpath-ng searches iteratively.
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request..leaf"}))
    await run(graph, fake, None, raw=b'{"x":' + nested(5000, b'{"leaf":7}') + b"}")
    assert fake.bodies("m") == [7]


# --- other odd JSON -------------------------------------------------------------------------


async def test_lone_surrogate_escapes_read_as_go_does(fake: FakeTransport) -> None:
    # Before: 400 "not JSON" (orjson refuses them); Go's encoding/json reads U+FFFD.
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request.instances"}))
    await run(graph, fake, None, raw=b'{"instances":["\\ud800x","\\udc00","\\ud83d\\ude00"]}')
    assert fake.bodies("m") == [["\ufffdx", "\ufffd", "\U0001f600"]]


async def test_map_predictions_with_a_lone_surrogate(fake: FakeTransport) -> None:
    # Before: forwarded unchanged (KServe maps it, with U+FFFD).
    graph = plan(sequence({"serviceUrl": url("m"), "mapPredictionsToInstances": True}))
    await run(graph, fake, None, raw=b'{"predictions":["\\ud800"]}')
    assert fake.bodies("m") == [{"instances": ["\ufffd"]}]


@pytest.mark.parametrize(
    ("number", "reason"),
    [(b"1e400", "infinity"), (b"-1e400", "infinity"), (b"9" * 400, "infinity")],
)
async def test_number_beyond_a_double_is_a_400_with_the_reason(
    number: bytes, reason: str, fake: FakeTransport
) -> None:
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request.instances"}))
    with pytest.raises(RequestMappingError, match=reason):
        await run(graph, fake, None, raw=b'{"instances":[' + number + b"]}")


async def test_large_integers_and_duplicate_keys_read_as_go_does(fake: FakeTransport) -> None:
    graph = plan(
        sequence({"serviceUrl": url("m"), "request": {"a": "$request.a", "b": "$request.b"}})
    )
    await run(graph, fake, None, raw=b'{"a":123456789012345678901234567890,"b":1,"b":2}')
    assert fake.bodies("m") == [{"a": 1.2345678901234568e29, "b": 2}]


@pytest.mark.parametrize("body", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1}x', b"\xef\xbb\xbf{}"])
async def test_not_json_keeps_kserves_answers(body: bytes, fake: FakeTransport) -> None:
    with pytest.raises(NoRouteMatched):
        await run(plan(switch("a")), fake, None, raw=body)
    with pytest.raises(RequestMappingError, match="cannot be read as JSON"):
        await run(
            plan(sequence({"serviceUrl": url("m"), "data": "$request.a"})), fake, None, raw=body
        )


@pytest.mark.parametrize("body", [b"[1,2]", b'"predictions"', b"null", b'{"predictions":"x"}'])
async def test_top_level_non_objects_pass_map_predictions_unchanged(
    body: bytes, fake: FakeTransport
) -> None:
    graph = plan(sequence({"serviceUrl": url("m"), "mapPredictionsToInstances": True}))
    await run(graph, fake, None, raw=body)
    assert sent(fake, "m") == [body]


async def test_outputs_with_names_that_are_not_strings_are_skipped(fake: FakeTransport) -> None:
    # Before: TypeError (unhashable list as a dict key) -> 500.
    fake.script[url("a")] = reply(
        body={"outputs": [{"name": ["x"], "data": [1]}, {"name": "y", "shape": [1], "data": [2]}]}
    )
    graph = plan(
        sequence(
            {"serviceUrl": url("a")},
            {"serviceUrl": url("b"), "data": "$response", "outputsToInputs": True},
        )
    )
    await run(graph, fake, {})
    assert fake.bodies("b") == [{"inputs": [{"name": "y", "shape": [1], "data": [2]}]}]


async def test_valid_json_of_every_shape_still_routes(fake: FakeTransport) -> None:
    graph = plan(switch("instances", "$.predictions"))
    bodies: list[dict[str, Any]] = [{"instances": []}, {"predictions": [1]}]
    for body in bodies:
        fake.calls.clear()
        result = await run(graph, fake, body)
        assert result.status == 200
        assert orjson.loads(result.body) == body


async def test_branches_failing_together_leave_no_unretrieved_exception(
    fake: FakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: asyncio logged "Task exception was never retrieved" for the second failure.
    graph = plan(
        {
            "root": {
                "routerType": "Ensemble",
                "steps": [{"serviceUrl": url("a")}, {"serviceUrl": url("b")}],
            }
        }
    )
    with pytest.raises(EnsembleMergeError):
        await run(graph, fake, [1])
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@pytest.mark.parametrize(
    "step",
    [
        {"outputsToInputs": True},
        {"outputsToInputs": {"scores": "x"}, "data": "$request.v2"},
        {"outputsToInputs": True, "data": "$response"},  # the first step's $response is the input
    ],
)
async def test_outputs_to_inputs_on_the_request_is_the_clients_fault(
    step: dict[str, Any], fake: FakeTransport
) -> None:
    # Before: MappingError 500 "the response has no v2 outputs list", for the client's body.
    graph = plan(sequence({"serviceUrl": url("m"), **step}))
    with pytest.raises(RequestMappingError, match="outputsToInputs: the request has no") as caught:
        await run(graph, fake, {"v2": {"outputs": [{"name": "other"}]}, "x": 1})
    assert caught.value.status == 400


async def test_first_step_response_selection_is_the_clients_fault(fake: FakeTransport) -> None:
    # Before: MappingError 500 "selected nothing from the previous response" (it was the request).
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$response.missing"}))
    with pytest.raises(RequestMappingError, match="selected nothing from the request"):
        await run(graph, fake, {"x": 1})
