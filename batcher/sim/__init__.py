"""A local imitation of Poe's Anthropic-compatible Messages API, for trying batcher without a key and for tests.

Self-contained: it imports nothing from the rest of batcher. The app and its
config need only orjson; the runners (``serve``, ``SimulatorThread``,
``SimulatorProcess``) need uvicorn, from the ``sim`` extra, and load on first use.
"""

from __future__ import annotations

from typing import Any

from batcher.sim.app import SimApp, SimConfig, create_app

__all__ = [
    "SimApp",
    "SimConfig",
    "SimulatorProcess",
    "SimulatorThread",
    "create_app",
    "serve",
    "start_in_thread",
]

_LAZY = {"serve", "SimulatorThread", "SimulatorProcess", "start_in_thread"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from batcher.sim import server

        return getattr(server, name)
    raise AttributeError(f"module 'batcher.sim' has no attribute {name!r}")
