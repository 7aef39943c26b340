"""Names that came as bytes (a file's, a command-line word) as the text the store and messages need.

Kept apart and light: the store checks every batch name with it, and
``batcher status`` should not load the job file reader to do so.
"""

from __future__ import annotations


def as_text(name: str) -> str:
    """``name`` as text that can be stored and printed, bytes that are not UTF-8 written as ``\\xe9``.

    The command line and the file system hand Python such bytes (a Latin-1
    ``café.jsonl``) as lone surrogates, which SQLite, JSON and a terminal
    refuse: a file may have that name, but where its name is kept or shown
    it must be text, and the same text each time it is read. A valid name
    is returned as it is.
    """
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no byte stands for (made in Python, not read)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def is_text(name: str) -> bool:
    """Whether ``name`` is valid UTF-8 text (see :func:`as_text`)."""
    return as_text(name) == name
