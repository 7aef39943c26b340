"""Telling how far a long reading or writing is, as its chunks go by.

The import, the estimate and the export hand their chunks on through
:func:`told`; the line that shows it is :class:`batcher.progress.CountDisplay`.
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

#: Told how far: lines (or jobs) done so far, and their part of all (None
#: when the whole is not known).
Progress = Callable[[int, float | None], None]

T = TypeVar("T")


def told(chunks: Iterator[T], progress: Progress, count: Callable[[T], int],
         part: Callable[[T, int], float | None]) -> Iterator[T]:
    """``chunks`` as they come; each time the consumer asks for the next, ``progress`` hears how far.

    ``count`` is how many lines a chunk holds; ``part`` how far a chunk, with
    the lines done so far, reaches. ``chunks`` is closed however the
    consumer ends, so that what it holds (worker processes, a read
    transaction) ends with it.

    >>> heard = []
    >>> list(told(iter(["ab", "c"]), lambda *how_far: heard.append(how_far), len, lambda _, done: done / 3))
    ['ab', 'c']
    >>> heard
    [(2, 0.6666666666666666), (3, 1.0)]
    """
    done = 0
    try:
        for chunk in chunks:
            yield chunk
            done += count(chunk)
            progress(done, part(chunk, done))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
