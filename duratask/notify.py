"""In-process wake-ups that work across threads and event loops.

A waiter parks on a topic ("orchestrations", "activities", "instance:ID"); ``notify`` wakes every
waiter of that topic, whichever thread or event loop it runs in. Storages call ``notify`` after a
commit, so a waiting client or idle worker in the same process reacts at once instead of polling.
Across processes, a SQLite storage watches ``PRAGMA data_version`` and wakes all waiters when
another process committed; PostgreSQL relays LISTEN/NOTIFY here; polling is only a safety net.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterable


class Notifier:
    """Topic-based wake-ups; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        #: The topics of each registered future: unregistering touches those alone (a server
        #: with thousands of waiting clients must not scan every topic per wake-up).
        self._topics_of: dict[asyncio.Future[None], tuple[str, ...]] = {}

    def notify(self, *topics: str) -> None:
        """Wake every waiter of each topic (each is unregistered from all its topics)."""
        with self._lock:
            woken = {fut for topic in topics for fut in self._waiters.pop(topic, ())}
            for fut in woken:
                self._discard(fut)
        for fut in woken:
            loop = fut.get_loop()
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(_resolve, fut)

    def notify_all(self) -> None:
        """Wake every waiter of every topic (something changed, we cannot tell what)."""
        with self._lock:
            topics = list(self._waiters)
        self.notify(*topics)

    def register(self, *topics: str) -> asyncio.Future[None]:
        """Start listening before checking state, so no notification slips between the two."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            for topic in topics:
                self._waiters[topic].add(fut)
            self._topics_of[fut] = topics
        return fut

    async def wait(self, fut: asyncio.Future[None], timeout: float | None) -> bool:
        """Wait on a registered future; ``False`` when ``timeout`` passed first. Always unregisters.

        Awaits the future itself (it belongs to this waiter alone), with a timer beside it: a
        wake-up costs the event loop one turn, not the three of ``asyncio.wait``.
        """
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            if not fut.done():
                timed_out = True
                fut.set_result(None)

        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, expire)
        try:
            await fut  # a cancelled waiter cancels it too, which nobody else awaits
            return not timed_out
        finally:
            if timer is not None:
                timer.cancel()
            self.unregister(fut)

    def unregister(self, fut: asyncio.Future[None]) -> None:
        """Stop listening (a no-op for a future already woken or unregistered)."""
        with self._lock:
            self._discard(fut)

    def _discard(self, fut: asyncio.Future[None]) -> None:
        for topic in self._topics_of.pop(fut, ()):
            waiters = self._waiters.get(topic)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[topic]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def instance_topic(instance_id: str) -> str:
    return f"instance:{instance_id}"


ORCHESTRATIONS = "orchestrations"
ACTIVITIES = "activities"
#: Messages for durable entities (ids starting with ``ENTITY_ID_PREFIX``, as ``backend.entities``
#: names them) were queued. A storage that says so (``notifies_entities = True``) sends it along
#: with ``ORCHESTRATIONS``, so that entity waiters need not wake for every orchestration's message.
ENTITIES = "entities"
ENTITY_ID_PREFIX = "@"


def inbox_topics(instance_ids: Iterable[str]) -> tuple[str, ...]:
    """The topics to notify once messages for ``instance_ids`` were queued."""
    if any(instance_id.startswith(ENTITY_ID_PREFIX) for instance_id in instance_ids):
        return (ORCHESTRATIONS, ENTITIES)
    return (ORCHESTRATIONS,)
