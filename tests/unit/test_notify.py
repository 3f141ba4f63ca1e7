"""The in-process wake-ups: who is woken, and that nothing is left behind."""

from __future__ import annotations

import asyncio
import threading

from duratask.notify import Notifier


def _empty(notifier: Notifier) -> bool:
    return not notifier._waiters and not notifier._topics_of


async def test_notify_wakes_the_waiters_of_its_topic_only() -> None:
    notifier = Notifier()
    a = notifier.register("a")
    b = notifier.register("b")
    notifier.notify("a")
    assert await notifier.wait(a, timeout=1.0) is True
    assert await notifier.wait(b, timeout=0.05) is False  # never notified: timed out
    assert _empty(notifier)


async def test_a_waiter_of_two_topics_wakes_on_either_and_leaves_both() -> None:
    notifier = Notifier()
    fut = notifier.register("a", "b")
    notifier.notify("b")
    assert await notifier.wait(fut, timeout=1.0) is True
    assert _empty(notifier)  # woken through "b", gone from "a" too
    notifier.notify("a")  # nobody left to wake, and no error


async def test_notify_from_another_thread_wakes_the_loop() -> None:
    notifier = Notifier()
    fut = notifier.register("work")
    threading.Timer(0.02, notifier.notify, args=("work",)).start()
    assert await notifier.wait(fut, timeout=5.0) is True


async def test_many_waiters_come_and_go_without_residue() -> None:
    notifier = Notifier()
    futures = [notifier.register(f"instance:{i}", "all") for i in range(5000)]
    for fut in futures[::2]:
        notifier.unregister(fut)
    notifier.notify_all()
    results = await asyncio.gather(*(notifier.wait(fut, timeout=1.0) for fut in futures[1::2]))
    assert all(results)
    for fut in futures:
        notifier.unregister(fut)  # twice or after a wake-up: a no-op
    assert _empty(notifier)
