"""Turns at one pacer: interactive first, batches in rotation, the pace kept."""

from __future__ import annotations

import time

import anyio
import pytest

from batcher.lanes import Turns
from batcher.pacer import Pacer, Stopped


async def _grants(rpm: float, lanes: dict[str, int], interactive_at: float | None = None) -> tuple[list[str], float]:
    """Order in which lane callers (and one interactive caller) got their start."""
    turns = Turns(Pacer(rpm))
    order: list[str] = []
    waited: list[float] = []

    async def caller(lane: object, name: str) -> None:
        await lane.wait()  # type: ignore[attr-defined]
        order.append(name)

    async def person() -> None:
        assert interactive_at is not None
        await anyio.sleep(interactive_at)
        asked = time.monotonic()
        await turns.interactive()
        waited.append(time.monotonic() - asked)
        order.append("person")

    async with anyio.create_task_group() as tg:
        tg.start_soon(turns.run)
        async with anyio.create_task_group() as callers:
            for name, n in lanes.items():
                lane = turns.lane(name)
                for _ in range(n):
                    callers.start_soon(caller, lane, name)
            if interactive_at is not None:
                callers.start_soon(person)
        turns.stop()
    return order, waited[0] if waited else 0.0


def test_a_small_batch_is_not_stuck_behind_a_big_one() -> None:
    order, _ = anyio.run(_grants, 60_000.0, {"big": 200, "small": 10})
    assert len(order) == 210
    # In rotation: the small batch's ten starts come among the first twenty.
    assert order[:20].count("small") == 10


def test_an_interactive_request_goes_first_and_the_pace_holds() -> None:
    started = time.monotonic()
    order, waited = anyio.run(_grants, 600.0, {"batch": 10}, 0.35)  # one start per 100 ms
    elapsed = time.monotonic() - started
    assert waited < 0.04  # it borrowed a start at once instead of waiting ~50 ms for the next one
    assert 2 < order.index("person") < 7
    # 11 starts at 10 a second: the borrowed start was paid back, not added.
    assert elapsed >= 10 * 0.1 * 0.95


def test_a_stopped_lane_raises_stopped_and_others_go_on() -> None:
    async def main() -> list[str]:
        turns = Turns(Pacer(6000.0))
        done: list[str] = []
        a, b = turns.lane("a"), turns.lane("b")

        async def waiter(lane: object, name: str) -> None:
            try:
                await lane.wait()  # type: ignore[attr-defined]
                done.append(name)
            except Stopped:
                done.append(name + " stopped")

        async with anyio.create_task_group() as tg:
            a.stop()
            tg.start_soon(waiter, a, "a")
            tg.start_soon(waiter, b, "b")
            tg.start_soon(turns.run)
            await anyio.sleep(0.1)
            turns.stop()
        with pytest.raises(Stopped):
            await turns.interactive()
        return done

    assert sorted(anyio.run(main)) == ["a stopped", "b"]
