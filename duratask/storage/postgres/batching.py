"""Group commit of instance creations: concurrent ``create_instance`` calls share one transaction.

Each start used to be a transaction of its own (a lock check, two inserts, a NOTIFY, a COMMIT and
its fsync) through a pool of ten connections, which capped a burst of starts at a few hundred per
second. Calls that arrive while a batch is being written wait and go together in the next one:
one ``unnest`` statement per table and one COMMIT for up to ``max_batch`` instances.

What a caller sees does not change: ``True`` if its instance was created, ``False`` if an
unfinished instance has the id. Two calls with one id never share a batch (the second waits for
the next one and finds the first), so the first wins as it would one after the other. A batch
that fails with an error about the data, not the connection, is retried one call at a time, so
one bad start cannot fail the others; an outage (``psycopg.OperationalError``) fails every call
of the batch, as it would have failed each on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg

from ..base import NewInstance

#: Instances per transaction: large enough that a burst of starts costs a few commits, small
#: enough that the first instances of a burst reach the workers soon.
MAX_BATCH = 256

CreateMany = Callable[[list[NewInstance]], Awaitable[set[str]]]


class CreateBatcher:
    """Queues creations and writes them in batches, one batch at a time."""

    def __init__(self, create_many: CreateMany, max_batch: int = MAX_BATCH) -> None:
        self._create_many = create_many
        self._max_batch = max_batch
        self._pending: list[tuple[NewInstance, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def create(self, new: NewInstance) -> bool:
        """Whether ``new`` was created (``False``: an unfinished instance has its id)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((new, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="duratask-create-batcher")
        return await future

    async def close(self) -> None:
        """Wait for the calls already queued (their callers are waiting for them)."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)

    def _next_batch(self) -> list[tuple[NewInstance, asyncio.Future[bool]]]:
        batch: list[tuple[NewInstance, asyncio.Future[bool]]] = []
        later: list[tuple[NewInstance, asyncio.Future[bool]]] = []
        ids: set[str] = set()
        for item in self._pending:
            instance_id = item[0].record.instance_id
            if item[1].done():  # its caller was cancelled before the batch went out
                continue
            if len(batch) < self._max_batch and instance_id not in ids:
                batch.append(item)
                ids.add(instance_id)
            else:
                later.append(item)
        self._pending = later
        return batch

    async def _flush(self) -> None:
        while self._pending:
            batch = self._next_batch()
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[NewInstance, asyncio.Future[bool]]]) -> None:
        try:
            created = await self._create_many([new for new, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            if len(batch) > 1 and not isinstance(exc, psycopg.OperationalError):
                for item in batch:  # find the bad one: each on its own
                    await self._write([item])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the storage is closing): the callers must not hang
            for _, future in batch:
                future.cancel()
            raise
        for new, future in batch:
            if not future.done():
                future.set_result(new.record.instance_id in created)
