"""``python -m batcher.sim``: the same as ``batcher simulate``."""

import sys

try:
    from batcher.sim.command import simulate
except KeyboardInterrupt:  # interrupted while still starting up: nothing to clean
    sys.exit(0)

if __name__ == "__main__":
    simulate(prog_name="python -m batcher.sim")
