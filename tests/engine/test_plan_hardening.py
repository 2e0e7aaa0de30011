"""Graph texts that used to crash the compiler (or compile into a graph failing every request):
each is now a ``GraphSpecError`` naming the problem."""

from __future__ import annotations

import time
from typing import Any

import pytest

from infergraph.router.engine.errors import GraphSpecError
from infergraph.router.engine.plan import MAX_NESTING, load_plan
from infergraph.testing.fakes import FakeTransport, plan, run, url

STEP = "nodes:\n  root:\n    routerType: Sequence\n    steps:\n    - serviceUrl: http://a/\n"


def rejected(text: str) -> GraphSpecError:
    with pytest.raises(GraphSpecError) as caught:
        load_plan(text, default_name="g")
    assert caught.value.problems
    return caught.value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Before: ValueError from PyYAML's timestamp constructor.
        (STEP + "      request: {when: 2024-13-45}\n", "month must be in 1..12"),
        # Before: accepted; every request then sent a JSON body orjson cannot write (500).
        (STEP + "      request: {x: !!binary aGVsbG8=}\n", "holds a bytes"),
        (STEP + "      request: {x: 123456789012345678901234567890}\n", "beyond 64 bits"),
        (STEP + "      request: {x: .nan}\n", "nan, which JSON lacks"),
        (STEP + "      request: {x: !!set {a: null}}\n", "holds a set"),
        # Before: accepted (an infinite timeout).
        (STEP + "routerTimeouts: {serverRead: .inf}\n", "finite number"),
        # Before: UnicodeEncodeError from pygjson.compile.
        (
            "nodes:\n  root:\n    routerType: Switch\n    steps:\n"
            '    - serviceUrl: http://a/\n      condition: "a\\ud800"\n',
            "does not compile",
        ),
        # Before: a self-referencing template was accepted, then failed every request.
        (STEP + "      request: &r {x: *r}\n", "nests over 64 levels"),
    ],
)
def test_yaml_graphs_that_crashed_or_broke_are_rejected(text: str, message: str) -> None:
    assert message in str(rejected(text))


async def test_a_yaml_date_in_a_template_is_sent_as_its_text(fake: FakeTransport) -> None:
    graph = load_plan(
        STEP + "      request: {when: 2024-01-02, rows: $request.rows}\n", default_name="g"
    )
    await run(graph, fake, None, raw=b'{"rows":' + b"[" * 300 + b"]" * 300 + b"}")
    assert fake.calls[0].body == b'{"when":"2024-01-02","rows":' + b"[" * 300 + b"]" * 300 + b"}"


def test_a_graph_nested_too_deep_to_parse_is_rejected() -> None:
    # Before: RecursionError (orjson refuses 1024+ levels, then PyYAML recursed).
    deep = "[" * 5000 + "]" * 5000
    text = (
        '{"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://a/", '
        f'"request": {deep}}}]}}}}}}'
    )
    assert "nests too deeply" in str(rejected(text))


def test_a_template_of_yaml_aliases_is_rejected_at_once() -> None:
    # Before: ten levels of ten aliases (10**7 values) took about 10 s to compile.
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
    started = time.perf_counter()
    error = rejected("\n".join(lines) + "\n" + STEP + "      request: {x: *l7}\n")
    assert "holds over 100000 values" in str(error)
    assert time.perf_counter() - started < 2


def chain(levels: int) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for i in range(levels):
        target = {"nodeName": f"n{i + 1}"} if i < levels - 1 else {"serviceUrl": url("m")}
        nodes["root" if i == 0 else f"n{i}"] = {"routerType": "Sequence", "steps": [target]}
    return nodes


async def test_nodes_nest_up_to_the_limit(fake: FakeTransport) -> None:
    result = await run(plan(chain(MAX_NESTING)), fake, {"x": 1})
    assert result.status == 200


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 400, 1200])
def test_nodes_nested_past_the_limit_are_rejected(levels: int) -> None:
    # Before: 400 levels compiled, then every request hit RecursionError (500); 1200 levels
    # crashed the compiler with RecursionError.
    with pytest.raises(GraphSpecError, match=f"nodes nest more than {MAX_NESTING} levels"):
        plan(chain(levels))
