"""A local imitation of Poe's Anthropic-compatible Messages API, for trying batcher without a key and for tests.

Self-contained: it imports nothing from the rest of batcher. Names load on
first use, so registering the ``simulate`` command costs the CLI nothing;
the app needs only orjson, the runners (``serve``, ``SimulatorThread``,
``SimulatorProcess``) need uvicorn from the ``sim`` extra.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batcher.sim.app import SimApp, create_app
    from batcher.sim.config import SimConfig
    from batcher.sim.server import SimulatorProcess, SimulatorThread, serve, start_in_thread

_WHERE = {
    "SimApp": "app",
    "SimConfig": "config",
    "create_app": "app",
    "serve": "server",
    "SimulatorThread": "server",
    "SimulatorProcess": "server",
    "start_in_thread": "server",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batcher.sim' has no attribute {name!r}")
    return getattr(import_module(f"batcher.sim.{module}"), name)
