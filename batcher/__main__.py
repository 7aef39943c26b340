"""``python -m batcher`` is the ``batcher`` command."""

from .interrupts import hold_while_starting

hold_while_starting()  # until the command's entry can answer Ctrl-C and SIGTERM (see batcher.cli)

from .cli import main  # noqa: E402

main()
