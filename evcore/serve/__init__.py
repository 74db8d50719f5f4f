"""`evcore serve`: an HTTP monitor with Prometheus metrics and a Flower-compatible API."""
