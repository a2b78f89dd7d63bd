"""Serving: the memory bank (build, add, verify, search), the HTTP server, its batcher and schema."""
