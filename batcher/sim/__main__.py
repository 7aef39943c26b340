"""``python -m batcher.sim``: the same as ``batcher simulate``."""

from batcher.sim.command import simulate

if __name__ == "__main__":
    simulate(prog_name="python -m batcher.sim")
