"""web: the node's own reading worklist page and JSON API (stdlib HTTP server, read-only)."""
