"""HTTP transports: how the router's steps reach model servers."""
