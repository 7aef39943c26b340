"""batcher: push large prompt datasets through Claude on Poe, at the rate limit, losing nothing."""

__version__ = "0.1.0"
