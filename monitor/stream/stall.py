"""What a stalled worker was stuck on, for the log line before it exits (`Worker._watch_streams`):
every task of both event loops and the chain it waits through, each partition as the consumers
see it, and where Faust's changelog recovery stands. Each reads the framework's internals and never
raises: the exit that follows must happen."""

from __future__ import annotations

import asyncio
import gc
from typing import Any


def _suspension(awaitable: Any) -> tuple[Any, Any]:
    """Where a coroutine, generator or async generator is suspended (its frame, None if it is not
    one of them) and what it waits on there. An `async for` awaits its generator through a wrapper
    (`async_generator_asend`) that names it only to the garbage collector: a task iterating
    Faust's stream waits that way."""
    if type(awaitable).__name__ == "async_generator_asend":
        awaitable = next((r for r in gc.get_referents(awaitable) if hasattr(r, "ag_frame")), None)
    for frame, awaits in (("cr_frame", "cr_await"), ("gi_frame", "gi_yieldfrom"), ("ag_frame", "ag_await")):
        if getattr(awaitable, frame, None) is not None:
            return getattr(awaitable, frame), getattr(awaitable, awaits)
    return None, None


def waiting_tasks(*loops: asyncio.AbstractEventLoop | None) -> list[str]:
    """Each task of these loops and where it is suspended: the chain of coroutines it awaits
    through, and the line of the innermost one. What a stalled worker was stuck on. Never raises:
    another thread's loop runs on while it is read, and the exit that follows must happen."""
    waiting = []
    for loop in loops:
        try:
            for task in list(asyncio.all_tasks(loop)) if loop is not None else []:
                chain, where, awaited = [], "?", task.get_coro()
                while (suspended := _suspension(awaited))[0] is not None:
                    frame, awaited = suspended
                    chain.append(frame.f_code.co_qualname)
                    where = f"{'/'.join(frame.f_code.co_filename.rsplit('/', 2)[-2:])}:{frame.f_lineno}"
                waiting.append(f"{task.get_name()} {' > '.join(chain)} at {where}")
        except Exception as exc:  # noqa: BLE001 - a diagnostic; the caller exits next
            waiting.append(f"(tasks of {loop!r} not read: {exc!r})")
    return sorted(waiting)


def fetch_state(consumer: Any) -> dict[str, str]:
    """How Faust's consumer and the aiokafka consumer under it see each assigned partition: whether
    Faust lets it through (active), whether aiokafka fetches it (paused, position, highwater,
    records buffered). What a stalled worker's partitions were waiting on. Never raises."""
    try:
        active, flow = consumer._get_active_partitions(), consumer.flow_active
        client = consumer._thread._consumer
        subscription, buffered = client._subscription.subscription, set(client._fetcher._records)
        state: dict[str, str] = {"flow": "active" if flow else "suspended"}
        for tp in sorted(subscription.assignment.tps if subscription and subscription.assignment else ()):
            at = subscription.assignment.state_value(tp)
            state[f"{tp.topic}[{tp.partition}]"] = " ".join(filter(None, (
                f"{at.position if at.has_valid_position else '?'}/{at.highwater}",
                "active" if tp in active else "inactive", "paused" if at.paused else "",
                "awaiting-reset" if at.awaiting_reset else "", "buffered" if tp in buffered else "")))
        return state
    except Exception as exc:  # noqa: BLE001 - a diagnostic; the caller exits next
        return {"not read": repr(exc)}


def recovery_state(recovery: Any) -> dict[str, Any]:
    """Where Faust's changelog recovery stands: in recovery, what it still has to read, whether its
    end is signalled. Never raises."""
    try:
        return {"in_recovery": recovery.in_recovery, "end_signalled": recovery.signal_recovery_end.is_set(),
                "remaining": {f"{tp.topic}[{tp.partition}]": n for tp, n in recovery.active_remaining().items() if n}}
    except Exception as exc:  # noqa: BLE001 - a diagnostic
        return {"not read": repr(exc)}
