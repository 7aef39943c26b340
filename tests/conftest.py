"""Shared fixtures: the simulator over real HTTP, in this process or as a subprocess."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from hypothesis import HealthCheck, settings

# Property tests: a few dozen examples each in the ordinary suite (seconds in
# all), many more with HYPOTHESIS_PROFILE=fuzz (`make fuzz`).
settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The command line runs in hundreds of subprocesses here: let the first one
# write the package's bytecode, as any installed batcher has it, rather than
# have every start compile the whole package again where the environment
# says not to write it (~0.15 s a start).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# A suite started in the background by a shell without job control inherits
# Ctrl-C ignored, and so would every command it starts: the tests of what a
# Ctrl-C does need Python's own handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


#: The files that take longest (`pytest --durations=0`), slowest first. The
#: workers of `make test` take whole files in collection order: these go
#: first, so that no worker starts one of them while the other is running out.
SLOWEST_FILES = ("test_run_cli.py", "test_runner.py", "test_serve.py", "test_key_kept_out.py", "test_api.py",
                 "test_signals.py", "test_spend.py", "test_misbehaving_servers.py", "test_odd_io.py", "test_import.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every Hypothesis test ``property``, so `make fuzz` finds them all; the slowest files first."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept

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


#: The key the Python API's tests run with (the simulator takes any).
API_KEY = "poe-test-key"


@pytest.fixture
def api_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simulator: SimulatorFactory) -> Iterator[Any]:
    """For the Python API: a fresh folder as cwd, the key and a simulator's URL in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("POE_", "BATCHER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POE_API_KEY", API_KEY)
    monkeypatch.setenv("POE_BASE_URL", simulator.base_url)
    yield simulator
