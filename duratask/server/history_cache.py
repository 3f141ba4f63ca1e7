"""The histories of the instances a server is running, kept from one work item to the next.

Every orchestration work item carries the instance's whole history. Reading it from the storage
and converting every event to its protocol message for each episode costs a read per episode and
makes a long orchestration quadratic. The dispatcher instead keeps, per instance, the history it
handed out plus what the episode's commit appended, each event converted once.

A kept history serves only the work item of the same execution whose stored history has exactly
its length (the lease says both): within an execution a history only grows (continue-as-new and
rewind start a new execution id), so the same length means the same events. Anything else (another
node ran an episode, the instance was purged and started again, the entry was evicted) reads the
storage, as without the cache. Entries are bounded by their total number of events (least
recently kept go first) and leave as soon as they are taken or their instance finishes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import history as h
from ..protocol import convert


@dataclass
class History:
    """One execution's history as stored, with the protocol messages of its first events."""

    execution_id: str
    events: list[h.HistoryEvent]
    #: ``events[:len(messages)]`` as protocol ``HistoryEvent`` messages (converted once, on demand)
    messages: list[Any] = field(default_factory=list)

    def protocol_messages(self) -> list[Any]:
        """Every event as a protocol message; only those not converted before are converted now."""
        missing = self.events[len(self.messages) :]
        if missing:
            self.messages.extend(convert.event_to_pb(event) for event in missing)
        return self.messages

    def after_commit(self, execution_id: str, appended: Sequence[h.HistoryEvent], reset: bool) -> History:
        """The history once a commit appended ``appended`` (after deleting it all, with ``reset``)."""
        if reset:
            return History(execution_id, list(appended))
        return History(execution_id, [*self.events, *appended], list(self.messages))


class HistoryCache:
    """Histories by instance id, at most ``max_events`` events in all."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._entries: OrderedDict[str, History] = OrderedDict()
        self._events = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def events(self) -> int:
        return self._events

    def take(self, instance_id: str, execution_id: str, length: int) -> History | None:
        """The kept history of ``instance_id`` if it is that execution's and ``length`` long; the
        entry leaves the cache either way (the caller keeps the history while it runs the item)."""
        kept = self._entries.pop(instance_id, None)
        if kept is not None:
            self._events -= len(kept.events)
            if kept.execution_id == execution_id and len(kept.events) == length:
                self.hits += 1
                return kept
        self.misses += 1
        return None

    def keep(self, instance_id: str, history: History) -> None:
        self.forget(instance_id)
        if len(history.events) > self.max_events:
            return
        self._entries[instance_id] = history
        self._events += len(history.events)
        while self._events > self.max_events:
            _, evicted = self._entries.popitem(last=False)
            self._events -= len(evicted.events)

    def forget(self, instance_id: str) -> None:
        kept = self._entries.pop(instance_id, None)
        if kept is not None:
            self._events -= len(kept.events)
