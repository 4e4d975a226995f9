"""Task state, the queue, the runner and the callback outbox (no FastAPI here)."""
