"""Building a step's input from the node input and earlier replies, compiled at load time.

- ``data``: ``$request`` (the node input), ``$response`` (the previous step's reply in a
  Sequence), or a JSONPath selection rooted at either, or at ``$steps.<name>`` (the reply of an
  earlier step of the same Sequence): ``$response.outputs[0]``, ``$request.instances``. One
  match gives its value; several give a list.
- ``outputsToInputs``: an Open Inference Protocol v2 response becomes the next v2 request:
  ``true`` keeps every output, a mapping ``{output: input}`` keeps and renames the listed ones.
  Names, shapes, datatypes and data are kept.
- ``request``: a template for the whole body. Any string in it that starts with ``$request``,
  ``$response`` or ``$steps.`` is replaced by what it selects (``$$`` starts a literal ``$``).

What a client sends can make a mapping fail, never crash: a request that cannot be decoded
(not JSON, not UTF-8, nested deeper than the engine reads), a selection that cannot be evaluated
on it (a filter comparing a string with a number, a recursive descent too deep for Python) or a
value that cannot be encoded is a ``RequestMappingError`` (400) naming the reason; the same from a
model's response is a ``MappingError`` (500). Documents too deep for orjson are decoded and
encoded by ``jsontext``'s iterative fallback.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonpath_ng.ext.parser import parse as parse_jsonpath

from infergraph.router.engine.errors import MappingError, RequestMappingError
from infergraph.router.engine.jsontext import EncodeError
from infergraph.router.engine.payload import NotJSON, Payload
from infergraph.router.engine.tensors import (
    InvalidMessage,
    MissingOutputs,
    TensorCodec,
    payload_of,
)
from infergraph.router.engine.transport import Reply
from infergraph.router.protocols import OIP_INFER_REQUEST, OIP_INFER_RESPONSE

ROOTS = ("$request", "$response", "$steps.")
# How deep a request template may nest, and how many values it may hold (its own structure,
# not what selections insert; YAML aliases can make a small text a huge tree).
TEMPLATE_DEPTH = 64
TEMPLATE_SIZE = 100_000


class MappingSyntaxError(ValueError):
    """A selection, template or conversion that cannot be compiled."""


@dataclass(slots=True)
class Sources:
    """What a step's input can be built from, at run time."""

    request: Payload
    previous: Reply | None = None
    earlier: Mapping[str, Reply] | None = None
    # Maps binary OIP replies (``engine.tensors``); None when the request is JSON.
    codec: TensorCodec | None = None


def _error(client_side: bool) -> type[MappingError | RequestMappingError]:
    return RequestMappingError if client_side else MappingError


def _document(payload: Payload, what: str, client_side: bool) -> Any:
    try:
        return payload.json()
    except NotJSON as exc:
        raise _error(client_side)(
            f"{what} cannot be read as JSON, so it cannot be mapped: {exc}"
        ) from exc


def _encoded(value: Any, what: str, client_side: bool) -> Payload:
    try:
        return Payload.of_json(value)
    except EncodeError as exc:
        raise _error(client_side)(f"{what} cannot be written as JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Selection:
    """A compiled ``$request...``, ``$response...`` or ``$steps.<name>...`` selection."""

    source: str
    root: str  # "request", "response" or "steps"
    step: str | None
    expr: Any  # compiled JSONPath for the part after the root; None selects the whole document

    def payload(self, sources: Sources) -> Payload:
        """The selected value as a payload (the whole document keeps its bytes untouched)."""
        origin = self._origin(sources)
        if self.expr is None:
            return origin
        return _encoded(
            self.value(sources, origin), f"what {self.source} selected", self.client_side(sources)
        )

    def client_side(self, sources: Sources) -> bool:
        """Whether this selects from the node input (the client's), not from a model's reply."""
        return self.root == "request" or (self.root == "response" and sources.previous is None)

    def value(self, sources: Sources, origin: Payload | None = None) -> Any:
        origin = origin or self._origin(sources)
        client_side = self.client_side(sources)
        document = _document(origin, f"the {self._describe(client_side)}", client_side)
        if self.expr is None:
            return document
        try:
            matches = [match.value for match in self.expr.find(document)]
        except RecursionError as exc:
            raise _error(client_side)(
                f"{self.source}: the {self._describe(client_side)} nests too deeply to search"
            ) from exc
        except Exception as exc:  # jsonpath-ng evaluating filters and functions on client data
            raise _error(client_side)(
                f"{self.source} cannot be evaluated on the {self._describe(client_side)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not matches:
            raise _error(client_side)(
                f"{self.source} selected nothing from the {self._describe(client_side)}"
            )
        return matches[0] if len(matches) == 1 else matches

    def _describe(self, client_side: bool) -> str:
        if client_side:
            return "request"
        if self.root == "response":
            return "previous response"
        return f"response of step {self.step!r}"

    def _origin(self, sources: Sources) -> Payload:
        if self.root == "request":
            return sources.request
        if self.root == "response":
            if sources.previous is None:
                return sources.request  # as KServe: $response on the first step is the input
            return payload_of(sources.previous)
        reply = (sources.earlier or {}).get(self.step or "")
        if reply is None:
            raise MappingError(f"{self.source}: step {self.step!r} has not run")
        return payload_of(reply)


def compile_selection(text: str) -> Selection:
    if text.startswith("$steps."):
        rest = text[len("$steps.") :]
        name, _, remainder = rest.partition(".")
        if "[" in name:
            name, _, tail = name.partition("[")
            remainder = f"[{tail}" + (f".{remainder}" if remainder else "")
        elif remainder:
            remainder = f".{remainder}"
        if not name:
            raise MappingSyntaxError(f"{text!r} must name a step: $steps.<name>...")
        root, step = "steps", name
    elif text.startswith("$request"):
        root, step, remainder = "request", None, text[len("$request") :]
    elif text.startswith("$response"):
        root, step, remainder = "response", None, text[len("$response") :]
    else:
        raise MappingSyntaxError(f"{text!r} must start with $request, $response or $steps.<name>")
    if remainder and not remainder.startswith((".", "[")):
        raise MappingSyntaxError(f"{text!r}: expected . or [ after the root")
    expr = None
    if remainder:
        try:
            expr = parse_jsonpath("$" + remainder)
        except Exception as exc:  # jsonpath-ng raises JSONPathError and, rarely, others
            raise MappingSyntaxError(f"{text!r} does not parse as JSONPath: {exc}") from exc
    return Selection(source=text, root=root, step=step, expr=expr)


@dataclass(frozen=True, slots=True)
class Template:
    """A request body built from literals and selections."""

    tree: Any  # literals, Selection leaves, and dicts/lists of them

    @property
    def selections(self) -> list[Selection]:
        found: list[Selection] = []

        def walk(node: Any) -> None:
            if isinstance(node, Selection):
                found.append(node)
            elif isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(self.tree)
        return found

    def build(self, sources: Sources) -> Any:
        def fill(node: Any) -> Any:
            if isinstance(node, Selection):
                return node.value(sources)
            if isinstance(node, dict):
                return {key: fill(value) for key, value in node.items()}
            if isinstance(node, list):
                return [fill(value) for value in node]
            return node

        return fill(self.tree)


def _check_template(tree: Any) -> None:
    """Reject, without recursion, a template nesting deeper than ``TEMPLATE_DEPTH``, larger than
    ``TEMPLATE_SIZE`` values, or holding a literal JSON cannot carry (YAML gives bytes, sets,
    non-finite floats and huge integers; its dates are written as strings)."""
    pending: list[tuple[Any, int]] = [(tree, 1)]
    size = 0
    while pending:
        node, level = pending.pop()
        size += 1
        if size > TEMPLATE_SIZE:
            raise MappingSyntaxError(f"the request template holds over {TEMPLATE_SIZE} values")
        if isinstance(node, dict | list):
            if level > TEMPLATE_DEPTH:
                raise MappingSyntaxError(f"the request template nests over {TEMPLATE_DEPTH} levels")
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, level + 1) for child in children)
        elif isinstance(node, bool | str | datetime.date | datetime.time) or node is None:
            continue  # orjson writes dates and times as RFC 3339 strings
        elif isinstance(node, int):
            if not -(2**63) <= node < 2**64:
                raise MappingSyntaxError("the request template holds an integer beyond 64 bits")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise MappingSyntaxError(f"the request template holds {node}, which JSON lacks")
        else:
            raise MappingSyntaxError(
                f"the request template holds a {type(node).__name__} ({node!r}), which JSON "
                "lacks (quote it)"
            )


def compile_template(tree: Any) -> Template:
    _check_template(tree)

    def compile_node(node: Any) -> Any:
        if isinstance(node, str):
            if node.startswith("$$"):
                return node[1:]
            if node.startswith(ROOTS):
                return compile_selection(node)
            return node
        if isinstance(node, dict):
            return {str(key): compile_node(value) for key, value in node.items()}
        if isinstance(node, list):
            return [compile_node(value) for value in node]
        return node

    return Template(compile_node(tree))


@dataclass(frozen=True, slots=True)
class OutputsToInputs:
    """A v2 response's ``outputs`` as the next v2 request's ``inputs``."""

    renames: tuple[tuple[str, str], ...] | None  # None keeps every output under its own name

    def apply(
        self, payload: Payload, client_side: bool = False, codec: TensorCodec | None = None
    ) -> Payload:
        """Convert ``payload``; ``client_side`` when it is the request (the node input, not a
        model's reply), whose faults are the client's (400) rather than the model's (500).
        A binary ``ModelInferResponse`` is converted by ``codec``, into a binary request."""
        what = "the request" if client_side else "the v2 response"
        if payload.media == OIP_INFER_RESPONSE and codec is not None:
            try:
                raw = codec.outputs_to_inputs(payload.raw, self.renames)
            except MissingOutputs as exc:
                raise _error(client_side)(self._missing(what, exc.missing, exc.present)) from exc
            except InvalidMessage as exc:
                raise _error(client_side)(f"outputsToInputs: {what}: {exc}") from exc
            return Payload(raw, OIP_INFER_REQUEST)
        document = _document(payload, what, client_side)
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, list):
            raise _error(client_side)(f"outputsToInputs: {what} has no v2 outputs list")
        by_name = {
            o["name"]: o for o in outputs if isinstance(o, dict) and isinstance(o.get("name"), str)
        }
        if self.renames is None:
            chosen = [(name, name) for name in by_name]
        else:
            missing = [old for old, _ in self.renames if old not in by_name]
            if missing:
                raise _error(client_side)(self._missing(what, missing, list(by_name)))
            chosen = list(self.renames)
        inputs = []
        for old, new in chosen:
            output = by_name[old]
            tensor = {key: output[key] for key in ("shape", "datatype", "data") if key in output}
            if "parameters" in output:
                tensor["parameters"] = output["parameters"]
            inputs.append({"name": new, **tensor})
        request: dict[str, Any] = {"inputs": inputs}
        if "id" in document:
            request["id"] = document["id"]
        return _encoded(request, "outputsToInputs: the v2 request", client_side)

    @staticmethod
    def _missing(what: str, missing: list[str], present: list[Any]) -> str:
        return (
            f"outputsToInputs: {what} has no output named {', '.join(missing)}"
            f" (it has {', '.join(str(n) for n in present)})"
        )


def compile_outputs_to_inputs(setting: bool | dict[str, str]) -> OutputsToInputs | None:
    if setting is False:
        return None
    if setting is True:
        return OutputsToInputs(renames=None)
    if not setting:
        raise MappingSyntaxError("outputsToInputs needs true or a mapping of output: input names")
    return OutputsToInputs(renames=tuple((str(k), str(v)) for k, v in setting.items()))


def predictions_to_instances(payload: Payload) -> Payload:
    """``{"predictions": [...], ...}`` becomes ``{"instances": [...]}`` (the other fields are
    dropped); any other input passes unchanged, as KServe's ``json.Unmarshal`` failing leaves it.

    As Go's encoding/json, bytes that are not UTF-8 read as U+FFFD and lone surrogate escapes
    as U+FFFD; documents too deep for orjson are read (up to ``jsontext.MAX_DEPTH``).
    """
    document = payload.object_with("predictions", lossy_utf8=True)
    predictions = document["predictions"] if document is not None else None
    if isinstance(predictions, list) and predictions:
        return _encoded({"instances": predictions}, "mapPredictionsToInstances", True)
    return payload


@dataclass(frozen=True, slots=True)
class StepInput:
    """How one step's input is made; the default passes the node input through untouched."""

    data: Selection | None = None  # None: the node input ($request)
    template: Template | None = None
    outputs_to_inputs: OutputsToInputs | None = None
    map_predictions_to_instances: bool = False

    @property
    def passthrough(self) -> bool:
        """True when the step simply receives the node input."""
        return (
            self.data is None
            and self.template is None
            and self.outputs_to_inputs is None
            and not self.map_predictions_to_instances
        )

    @property
    def reads_node_input(self) -> bool:
        """Whether the step's input draws on the node input (``$request``, or no selection),
        for a step that has a previous reply (a first step's ``$response`` is the input too)."""
        if self.template is not None:
            return any(selection.root == "request" for selection in self.template.selections)
        return self.data is None or self.data.root == "request"

    @property
    def selections(self) -> list[Selection]:
        found = [self.data] if self.data is not None else []
        return found + (self.template.selections if self.template is not None else [])

    def build(self, sources: Sources) -> Payload:
        if self.template is not None:
            client_side = all(s.client_side(sources) for s in self.template.selections)
            return _encoded(self.template.build(sources), "the request template", client_side)
        payload = sources.request if self.data is None else self.data.payload(sources)
        if self.map_predictions_to_instances:
            payload = predictions_to_instances(payload)
        if self.outputs_to_inputs is not None:
            from_request = self.data is None or self.data.client_side(sources)
            payload = self.outputs_to_inputs.apply(payload, from_request, sources.codec)
        return payload


def input_from_node(spec: StepInput, node_input: Payload) -> Payload:
    """A step's input in a node without earlier replies (Switch, Splitter, Ensemble)."""
    if spec.passthrough:
        return node_input
    return spec.build(Sources(node_input))
