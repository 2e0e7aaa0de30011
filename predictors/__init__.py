"""What the router knows about model servers, and small local predictors for demos and tests."""
