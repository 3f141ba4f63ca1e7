"""The quick-start example: three activities in sequence, run end to end on the default SQLite file.

    python examples/hello_cities.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from duratask import ActivityContext, DurableTaskClient, OrchestrationContext, Worker

worker = Worker()  # sqlite:///duratask.db unless DURATASK_CONNECTION_STRING says otherwise


@worker.activity
def say_hello(ctx: ActivityContext, city: str) -> str:
    return f"Hello {city}!"


@worker.orchestrator
async def hello_cities(ctx: OrchestrationContext, _: Any) -> list[str]:
    return [await ctx.call_activity(say_hello, city) for city in ("Tokyo", "Seattle", "London")]


async def main() -> None:
    async with worker, DurableTaskClient() as client:
        instance_id = await client.schedule_new_orchestration_instance(hello_cities)
        result = await client.wait_for_instance_completion(instance_id, get_inputs_and_outputs=True, timeout=30)
        assert result is not None
        print(f"instance {instance_id}: {result.runtime_status.name}")
        print(f"output: {result.serialized_output}")
        history = await client.get_orchestration_history(instance_id)
        print(f"history: {len(history)} events ({', '.join(type(e).__name__ for e in history[:6])}, ...)")


if __name__ == "__main__":
    asyncio.run(main())
