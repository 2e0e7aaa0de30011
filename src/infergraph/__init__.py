"""infergraph: an inference-graph router (``infergraph.router``), a Kubernetes operator
(``infergraph.operator``) and what both know about model servers (``infergraph.predictors``).

The three parts live in the repository's root folders; ``src/infergraph`` links to them so that
every tool resolves them as ordinary packages.
"""
