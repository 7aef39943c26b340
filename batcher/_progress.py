"""Choosing a run's live display: a terminal line, a notebook output, or nothing."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from .progress import CountDisplay, ProgressDisplay, WaitDisplay, describe

if TYPE_CHECKING:
    from .runconfig import Snapshot

#: Seconds between two updates of a notebook's output.
NOTEBOOK_EVERY_S = 0.5


class Display(Protocol):
    def __call__(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


def in_notebook() -> bool:
    """Running in a Jupyter kernel (where output goes to a cell, not a terminal)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except AttributeError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class NotebookDisplay:
    """One output in the cell, updated in place (IPython's display ids; no widgets needed)."""

    def __init__(self) -> None:
        from IPython.display import Pretty, display

        self._pretty = Pretty
        self._handle: Any = display(Pretty("starting..."), display_id=True)
        self._last = 0.0
        self._shown: Snapshot | None = None
        self._latest: Snapshot | None = None

    def __call__(self, snapshot: Snapshot) -> None:
        self._latest = snapshot
        now = time.monotonic()
        if now - self._last >= NOTEBOOK_EVERY_S:
            self._last = now
            self._show(snapshot)

    def _show(self, snapshot: Snapshot) -> None:
        self._shown = snapshot
        self._handle.update(self._pretty(describe(snapshot)))

    def close(self) -> None:
        """Show the last figures, which the rate of updates may have held back."""
        if self._latest is not None and self._latest is not self._shown:
            self._show(self._latest)


def _shown(progress: bool | None) -> bool:
    """Whether a display goes on stderr: ``progress`` True forces it, None asks for a terminal.

    Never when the process has no stderr (started with ``2>&-``): then
    ``sys.stderr`` is None, and the work goes on without a word.
    """
    if progress is False or sys.stderr is None:
        return False
    return progress is True or sys.stderr.isatty()


@contextmanager
def counting(progress: bool | None, doing: str, unit: str = "line") -> Iterator[CountDisplay | None]:
    """How a long import, estimate or export shows how far it is (``doing``, counted by ``unit``).

    ``None``: on a terminal, nothing otherwise; True: a line every 10 s
    elsewhere too; False: nothing. A notebook shows only a run's progress.
    The line is taken away when the block ends, however it ends.
    """
    if in_notebook() or not _shown(progress):
        yield None
        return
    display = CountDisplay(doing, unit)
    try:
        yield display
    finally:
        display.close()


@contextmanager
def waiting(doing: str) -> Iterator[None]:
    """A spinner saying what a long step that cannot count does (``doing``), on a terminal only."""
    if in_notebook() or not _shown(None):
        yield
        return
    display = WaitDisplay(doing)
    try:
        yield
    finally:
        display.close()


def run_display(progress: bool | None) -> Display | None:
    """``None``: live on a terminal or in a notebook, nothing otherwise; True/False force it."""
    if progress is False:
        return None
    if in_notebook():
        return NotebookDisplay()
    if not _shown(progress):
        return None
    return ProgressDisplay()
