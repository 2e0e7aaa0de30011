"""infergraph's Kubernetes operator (InferenceGraph and Predictor resources); see issue 4."""
