"""The router as an HTTP service: graph registry with hot reload, request handling, lifecycle."""
