"""The graph engine: spec, compiled plan and the four router types, free of any network code.

``load_plan`` turns graph text into a ``GraphPlan``; ``run_graph`` executes it for one request
through an ``ExecutionContext`` whose ``Transport`` does the I/O.
"""

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import GraphRequestError, GraphSpecError
from infergraph.router.engine.plan import GraphPlan, compile_plan, load_plan
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, StepCall, Transport

__all__ = [
    "ExecutionContext",
    "GraphPlan",
    "GraphRequestError",
    "GraphSpecError",
    "Reply",
    "StepCall",
    "Transport",
    "compile_plan",
    "load_plan",
    "run_graph",
]
