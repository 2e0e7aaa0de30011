"""Binary tensors through a graph: which graphs can run on Open Inference Protocol messages in
protobuf's wire format, and the seam that maps them.

A request that arrives over gRPC ingress is a ``ModelInferRequest``. When every step the graph
can reach speaks ``v2-grpc`` and only passes tensors on (the node input as it is, or an earlier
reply through ``outputsToInputs``), the graph runs on those messages as bytes: each step sends
its input as it is, its reply is the ``ModelInferResponse`` the model server sent, and
``outputsToInputs`` turns one into the next request through a ``TensorCodec`` (implemented
beside the gRPC transport, injected through the execution context). No tensor is written as
JSON on that path. Any other graph runs on JSON v2, as a REST request does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from infergraph.router.engine.payload import Payload
from infergraph.router.engine.transport import Reply
from infergraph.router.protocols import OIP_MEDIA
from infergraph.router.protocols import Protocol as StepProtocol

if TYPE_CHECKING:
    from infergraph.router.engine.mapping import StepInput
    from infergraph.router.engine.plan import NodePlan, StepPlan, StepTarget

Renames = tuple[tuple[str, str], ...]


class MissingOutputs(ValueError):
    """``outputsToInputs`` names outputs the response does not have."""

    def __init__(self, missing: list[str], present: list[str]) -> None:
        super().__init__(", ".join(missing))
        self.missing, self.present = missing, present


class InvalidMessage(ValueError):
    """The bytes are not the message they should be (the reason is the message)."""


class TensorCodec(Protocol):
    def outputs_to_inputs(self, response: bytes, renames: Renames | None) -> bytes:
        """The ``ModelInferRequest`` whose inputs are ``response``'s outputs (all of them under
        their own names when ``renames`` is None, else the listed ones renamed), its ``id``
        kept; raises ``MissingOutputs`` or ``InvalidMessage``."""
        ...


def payload_of(reply: Reply) -> Payload:
    """A reply's body as a step's input, binary when the reply is an OIP message."""
    media = reply.content_type
    return Payload(reply.body, media if media in OIP_MEDIA else None)


def _input_passes_tensors(spec: StepInput, first: bool) -> bool:
    """The node input as it is, or a whole earlier reply through ``outputsToInputs``."""
    if spec.passthrough:
        return True
    data = spec.data
    if spec.template is not None or spec.map_predictions_to_instances or data is None:
        return False
    if data.expr is not None:
        return False
    if spec.outputs_to_inputs is None:
        return data.root == "request"
    return data.root == "steps" or (data.root == "response" and not first)


def _step_passes_tensors(step: StepPlan, first: bool) -> bool:
    if step.condition is not None or not _input_passes_tensors(step.input, first):
        return False
    if step.node is not None:
        return carries_tensors(step.node)
    targets: list[StepPlan | StepTarget] = [step]
    policy = step.policy
    if policy is not None:
        fallback = policy.fallback
        if fallback is not None and fallback.node is not None:
            if not carries_tensors(fallback.node):
                return False
        elif fallback is not None:
            targets.append(fallback)
        targets.extend(policy.replicas)
    return all(t.protocol is StepProtocol.V2_GRPC for t in targets)


def carries_tensors(node: NodePlan) -> bool:
    """Whether ``node`` can run on binary OIP messages: a Sequence or Splitter (the router
    types that read no body) whose steps all pass tensors on to ``v2-grpc`` services."""
    if node.router_type.value not in ("Sequence", "Splitter"):
        return False
    sequence = node.router_type.value == "Sequence"
    return all(
        _step_passes_tensors(step, first=not sequence or step.index == 0) for step in node.steps
    )
