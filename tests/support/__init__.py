"""Shared helpers of the tests and the benchmarks, importable as ``infergraph.testing``.

``src/infergraph/testing`` links here, so tests and benchmarks import these modules by name,
whatever ``conftest.py`` pytest loaded and without editing ``sys.path``. It is not part of the
wheel (``pyproject.toml`` excludes it).

- ``fakes``: a fake transport and plan helpers for engine tests;
- ``harness``: plain HTTP to real processes, the local predictor's step log, graph builders;
- ``jaeger``: the Jaeger configuration and a query client for trace tests;
- ``cluster``: the API-server handle of the operator tests;
- ``loadgen``: wrk, CPU accounting and result files for the benchmarks;
- ``paths``: the repository and the tools cache.
"""
