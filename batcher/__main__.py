"""``python -m batcher`` is the ``batcher`` command."""

from .cli import main

main()
