"""Rules every storage applies to a batch of ``InstanceDump``s on import (pure)."""

from __future__ import annotations

from collections import Counter

from .base import InstanceDump


def checked_ids(dumps: list[InstanceDump]) -> list[str]:
    """The batch's instance ids, in order; an id given twice is an error (which one would win?)."""
    ids = [dump.instance.instance_id for dump in dumps]
    repeated = [instance_id for instance_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"instance {repeated[0]!r} appears more than once in one import batch")
    return ids
