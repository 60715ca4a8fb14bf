"""The capacity queue on its own, on virtual time: one ticket in several queues, cancelled
waiters, round-robin order. (The scheduler tests check the same through real HTTP.)"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from agentrt._capacity import Capacity, acquire_any


async def test_first_backend_to_free_a_slot_takes_the_ticket_out_of_every_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = Capacity("a", 1), Capacity("b", 1)
    assert a.try_acquire() and b.try_acquire()
    got: list[Capacity] = []

    async def waiter() -> None:
        got.append(await acquire_any([a, b], "W/1"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert (a.statistics().waiting, b.statistics().waiting) == (1, 1)
        b.release()
    assert got == [b]
    assert (a.statistics().waiting, b.statistics().waiting) == (0, 0)
    assert (a.in_use, b.in_use) == (1, 1)  # b's slot changed hands, it was not freed
    a.release()
    assert a.in_use == 0 and a.try_acquire()


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cap = Capacity("a", 1)
    assert cap.try_acquire()
    with trio.move_on_after(5) as scope:
        await acquire_any([cap], "W/1")
    assert scope.cancelled_caught and trio.current_time() == 5
    assert cap.statistics().waiting == 0
    cap.release()
    assert cap.in_use == 0


async def test_a_slot_granted_in_the_instant_of_cancellation_is_passed_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cap = Capacity("a", 1)
    assert cap.try_acquire()
    order: list[str] = []

    async def waiter(actor: str, scope: trio.CancelScope) -> None:
        with scope:
            got = await acquire_any([cap], actor)
            order.append(actor)
            got.release()

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "W/1", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "W/2", second)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()  # W/1 is cancelled before it runs again...
        cap.release()  # ...and the slot freed in the same instant goes to W/1's ticket first
    assert order == ["W/2"]  # W/1 never ran with it; it handed the slot on
    assert (cap.in_use, cap.statistics().waiting) == (0, 0)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrent must be at least 1"):
        Capacity("a", 0)
