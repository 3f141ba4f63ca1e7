"""The seam between the shared workloads and each system: a `Driver` starts instances and awaits results.

Workloads are written once (bench/workloads.py) against this protocol, so every system runs the very
same sequence of starts and waits; a system adapter only translates to its own API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

CITIES = ("Tokyo", "Seattle", "London")
EXPECTED_CHAIN = [f"Hello {city}!" for city in CITIES]
EVENT_NAME = "go"


def expected_fanout_sum(n: int) -> int:
    """Each fan-out activity returns its own index; the orchestration sums them."""
    return n * (n - 1) // 2


class SystemUnavailable(Exception):
    """The system cannot run here at all (not installed, SDK not written yet): skip, do not retry."""


class WorkloadError(Exception):
    """An instance failed, timed out or returned a wrong result."""


@dataclass(frozen=True)
class Params:
    workdir: Path
    n: int = 2000
    latency_n: int = 200
    latency_warmup: int = 20
    fanout_n: int = 1000
    memory_n: int = 10_000
    timeout: float = 600.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["workdir"] = str(self.workdir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Params:
        return cls(**{**data, "workdir": Path(data["workdir"])})


class Driver(Protocol):
    """One running system (worker + client), opened by the system module's `open_driver(params)`.

    Handles are opaque to the workloads (an instance id, or a DBOS handle).
    """

    async def start_chain(self) -> object:
        """Start one "hello cities" instance (3 sequential activities)."""
        ...

    async def start_fanout(self, n: int) -> object:
        """Start one instance that calls n activities at once and sums their results."""
        ...

    async def result(self, handle: object) -> Any:
        """Wait for completion; return the output, or raise WorkloadError if it did not complete."""
        ...

    async def start_waiter(self) -> object:
        """Start one instance that waits for the external event EVENT_NAME (memory workload)."""
        ...

    async def wait_started(self, handle: object) -> None:
        """Return once the instance has run its first episode and is waiting."""
        ...


class InstanceMeter(Protocol):
    """Figures per instance started (CPU of the processes involved), from its creation on."""

    def count_instance(self) -> None: ...

    def metrics(self) -> dict[str, float]: ...


class Metered:
    """Mixed in before a system's driver: every instance it starts is counted on ``self.meter``,
    whose figures ``extra_metrics`` reports along with the driver's own ``more_metrics()``."""

    meter: InstanceMeter

    async def start_chain(self) -> object:
        self.meter.count_instance()
        started: object = await super().start_chain()  # type: ignore[misc]  # the driver mixed with
        return started

    async def start_fanout(self, n: int) -> object:
        self.meter.count_instance()
        started: object = await super().start_fanout(n)  # type: ignore[misc]  # the driver mixed with
        return started

    def more_metrics(self) -> dict[str, float]:
        return {}

    def extra_metrics(self) -> dict[str, float]:
        return {**self.meter.metrics(), **self.more_metrics()}
