"""One shape for the background services (after Prefect's ``LoopService``): call ``run_once``
every ``interval_s`` seconds until stopped.

A failed pass is logged (its event name and the error's type: an error's text may carry a DSN)
and the loop goes on: the metadata database may be briefly unreachable, and a background service
must outlive that. A pass that returns ``True`` (exactly: a count or a list is a report, not a
request) found work and may find more: the next pass starts at once. :meth:`LoopService.wake`
cuts the current wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


class LoopService:
    def __init__(self, name: str, run_once: Callable[[], Awaitable[object]], *,
                 interval_s: float, log: Any, failed_event: str,
                 wait_first: bool = False) -> None:
        self.name = name
        self.interval_s = interval_s
        self._run_once = run_once
        self._log = log
        self._failed_event = failed_event
        self._wait_first = wait_first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    def wake(self) -> None:
        """Start the next pass now rather than at the end of the interval."""
        self._wake.set()

    async def stop(self) -> None:
        """Cancel the loop (a pass in progress too) and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        if self._wait_first:
            await self._wait()
        while True:
            more = False
            try:
                more = await self._run_once() is True
            except Exception as exc:
                self._log.warning(self._failed_event, error_type=type(exc).__name__)
            if not more:
                await self._wait()

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.interval_s)
        self._wake.clear()
