"""A run's voice: its lines on stderr, and what becomes of the run when no one reads them.

A run speaks beside its live progress line (a pause for the store, a stop
asked for), so each line starts on a fresh line on a terminal and plainly
in a log. With no stderr at all (``2>&-``) it says nothing rather than
write into the results on stdout. When stderr's reader goes away
(``batcher run ... 2>&1 | head``), the closed pipe must not tear the run
down with its answers in flight: the run is asked to stop as a Ctrl-C
stops it, and the error is raised once the run has ended.
"""

from __future__ import annotations

import sys
from typing import Callable

from .runconfig import Snapshot


class Voice:
    """Lines and progress on stderr for a run that stops (``on_lost``) if they find no reader.

    >>> voice = Voice(on_lost=lambda: None)
    >>> voice.lost is None
    True
    """

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        #: Set when stderr's reader went away; the run raises it at its end.
        self.lost: BrokenPipeError | None = None

    def tell(self, line: str) -> None:
        """``line`` on stderr, on a fresh line after a live progress line (not in a log)."""
        if sys.stderr is not None and self.lost is None:
            try:
                print(("\n" if sys.stderr.isatty() else "") + line, file=sys.stderr, flush=True)
            except BrokenPipeError as exc:
                self._lose(exc)

    def guarded(self, on_progress: Callable[[Snapshot], None] | None) -> Callable[[Snapshot], None] | None:
        """``on_progress``, silent once stderr's reader has gone away."""
        if on_progress is None:
            return None

        def show(snapshot: Snapshot) -> None:
            if self.lost is None:
                try:
                    on_progress(snapshot)
                except BrokenPipeError as exc:
                    self._lose(exc)

        return show

    def _lose(self, exc: BrokenPipeError) -> None:
        if self.lost is None:
            self.lost = exc
            self._on_lost()
