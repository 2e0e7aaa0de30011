"""infergraph's router: runs InferenceGraphs as an HTTP service (a drop-in for KServe's router)."""
