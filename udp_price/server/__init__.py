"""The server: the pure core, its guards, and the shells around it (loop, operations, metrics, workers)."""
