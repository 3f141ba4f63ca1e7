"""A deterministic, realistic set of stored instances: a mix of names, id prefixes, statuses and
histories, created evenly over a number of days.

Each instance is an `InstanceRecord` (the storage seam's type) with its history (encoded events,
3 to 10 for every instance that has started) and inbox (the start message of a PENDING one), so a
loader writes exactly what a storage would hold after running such instances.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from duratask import history as h
from duratask.models import OrchestrationRuntimeStatus as Status
from duratask.models import TaskFailureDetails
from duratask.storage.base import InstanceRecord

#: (id prefix, orchestration name, share of instances)
KINDS = (
    ("order-", "process_order", 0.40),
    ("invoice-", "send_invoice", 0.25),
    ("shipment-", "track_shipment", 0.20),
    ("refund-", "issue_refund", 0.10),
    ("report-", "build_report", 0.05),
)
#: Share of each status: mostly finished instances, as in a store that is purged now and then.
STATUS_MIX = (
    (Status.COMPLETED, 0.70),
    (Status.FAILED, 0.05),
    (Status.TERMINATED, 0.03),
    (Status.RUNNING, 0.12),
    (Status.PENDING, 0.05),
    (Status.SUSPENDED, 0.05),
)
MIN_HISTORY, MAX_HISTORY = 3, 10
_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_FAILURE = TaskFailureDetails(
    error_type="PaymentDeclinedError",
    error_message="card declined by issuer (code 51)",
    stack_trace='Traceback (most recent call last):\n  File "app/payments.py", line 42, in charge\n'
    "PaymentDeclinedError: card declined by issuer (code 51)\n",
)


@dataclass(frozen=True)
class Spec:
    instances: int = 1_000_000
    days: int = 30
    seed: int = 4
    start: datetime = _T0

    @property
    def step(self) -> timedelta:
        """Time between two consecutive creations (instances are created evenly)."""
        return timedelta(days=self.days) / self.instances

    def created_at(self, index: int) -> datetime:
        return self.start + self.step * index


@dataclass(frozen=True, slots=True)
class StoredInstance:
    index: int
    record: InstanceRecord
    history: list[bytes]
    #: (visible_at, encoded event) of each inbox message
    inbox: list[tuple[datetime, bytes]]


def _cumulative(shares: tuple[float, ...]) -> list[float]:
    return list(itertools.accumulate(shares))


_KIND_CUTS = _cumulative(tuple(share for _, _, share in KINDS))
_STATUS_CUTS = _cumulative(tuple(share for _, share in STATUS_MIX))


def _pick(cuts: list[float], roll: float) -> int:
    return min(bisect.bisect_right(cuts, roll * cuts[-1]), len(cuts) - 1)


def _middle_events(count: int) -> list[bytes]:
    """`count` events of an orchestration at work: activities scheduled and completed, episode by episode."""
    cycle = itertools.cycle(("scheduled", "episode", "completed"))
    events: list[bytes] = []
    task_id = 0
    for kind in itertools.islice(cycle, count):
        if kind == "scheduled":
            event: h.HistoryEvent = h.TaskScheduled(timestamp=_T0, event_id=task_id, name="charge_card",
                                                    input='{"amount": 42.5, "currency": "EUR"}')  # fmt: skip
        elif kind == "episode":
            event = h.OrchestratorStarted(timestamp=_T0)
        else:
            event = h.TaskCompleted(
                timestamp=_T0, task_scheduled_id=task_id, result='{"ok": true, "ref": "ch_3PqX"}'
            )
            task_id += 1
        events.append(h.encode_event(event))
    return events


#: Events after ExecutionStarted are the same for every instance of a length (their timestamps
#: are not the instance's: nothing reads them here), so they are encoded once.
_MIDDLES = {count: _middle_events(count) for count in range(MAX_HISTORY)}
_ENDINGS = {
    Status.COMPLETED: h.encode_event(
        h.ExecutionCompleted(timestamp=_T0, status=Status.COMPLETED, result='{"status": "done"}')
    ),
    Status.FAILED: h.encode_event(
        h.ExecutionCompleted(timestamp=_T0, status=Status.FAILED, failure=_FAILURE)
    ),
    Status.TERMINATED: h.encode_event(
        h.ExecutionCompleted(timestamp=_T0, status=Status.TERMINATED, result='"cancelled by operator"')
    ),
    Status.SUSPENDED: h.encode_event(h.ExecutionSuspended(timestamp=_T0, input='"waiting for review"')),
}


def _history(started: bytes, status: Status, length: int) -> list[bytes]:
    ending = _ENDINGS.get(status)
    head = [h.encode_event(h.OrchestratorStarted(timestamp=_T0)), started]
    middle = _MIDDLES[length - len(head) - (ending is not None)]
    return head + middle + ([ending] if ending is not None else [])


def instances(spec: Spec) -> Iterator[StoredInstance]:
    """Every instance of `spec`, in creation order."""
    rng = random.Random(spec.seed)
    start, step = spec.start, spec.step
    for index in range(spec.instances):
        prefix, name, _ = KINDS[_pick(_KIND_CUTS, rng.random())]
        status = STATUS_MIX[_pick(_STATUS_CUTS, rng.random())][0]
        instance_id = f"{prefix}{rng.getrandbits(64):016x}"
        execution_id = f"{rng.getrandbits(128):032x}"
        created_at = start + step * index
        finished_at = created_at + timedelta(seconds=1 + rng.random() * 30)
        payload = f'{{"customer": "c-{index % 9973}", "amount": {index % 500}.25}}'
        record = InstanceRecord(
            instance_id=instance_id,
            name=name,
            execution_id=execution_id,
            status=status,
            created_at=created_at,
            last_updated_at=created_at if status is Status.PENDING else finished_at,
            input=payload,
            output='{"status": "done"}' if status is Status.COMPLETED else None,
            failure=_FAILURE if status is Status.FAILED else None,
            completed_at=finished_at if status.is_terminal else None,
        )
        started = h.encode_event(h.ExecutionStarted(
            timestamp=created_at, name=name, instance_id=instance_id, execution_id=execution_id, input=payload
        ))  # fmt: skip
        if status is Status.PENDING:  # not started yet: no history, its start message waits in the inbox
            yield StoredInstance(index, record, [], [(created_at, started)])
        else:
            yield StoredInstance(
                index, record, _history(started, status, rng.randint(MIN_HISTORY, MAX_HISTORY)), []
            )
