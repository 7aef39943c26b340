"""Shared fixtures: the simulator over real HTTP, in this process or as a subprocess."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:  # the simulator needs the sim extra; load it only when a test asks
    from batcher.sim import SimulatorProcess, SimulatorThread


class SimulatorFactory:
    """Starts simulators for one test and stops them all at teardown.

    ``simulator(rpm=5, window=1, fail_500=0.3, ...)`` starts a new server with
    those options (``latency`` defaults to 0 here) and returns its handle
    (``.base_url``, ``.stats()``, ``.reset()``, ``.app``). Used directly
    (``simulator.base_url``), the fixture lazily starts one default server.
    """

    def __init__(self) -> None:
        self.handles: list[SimulatorThread] = []
        self._default: SimulatorThread | None = None

    def __call__(self, **options: Any) -> SimulatorThread:
        from batcher.sim import SimulatorThread

        options.setdefault("latency", 0)
        handle = SimulatorThread(**options).start()
        self.handles.append(handle)
        return handle

    @property
    def default(self) -> SimulatorThread:
        if self._default is None:
            self._default = self()
        return self._default

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.default, name)

    def stop_all(self) -> None:
        for handle in self.handles:
            handle.stop()
        self.handles.clear()


class SimulatorProcessFactory:
    """Like :class:`SimulatorFactory`, but each server is a ``python -m batcher.sim`` subprocess."""

    def __init__(self) -> None:
        self.handles: list[SimulatorProcess] = []

    def __call__(self, *args: str, **options: Any) -> SimulatorProcess:
        from batcher.sim import SimulatorProcess

        options.setdefault("latency", 0)
        handle = SimulatorProcess(args, **options).start()
        self.handles.append(handle)
        return handle

    def stop_all(self) -> None:
        for handle in self.handles:
            handle.stop()
        self.handles.clear()


@pytest.fixture
def simulator() -> Iterator[SimulatorFactory]:
    """In-thread simulator factory: ``start = simulator; sim = start(rpm=5, window=1)``."""
    factory = SimulatorFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def simulator_process() -> Iterator[SimulatorProcessFactory]:
    """Subprocess simulator factory: ``sim = simulator_process(rpm=5)``; SIGINT at teardown."""
    factory = SimulatorProcessFactory()
    try:
        yield factory
    finally:
        factory.stop_all()
