"""What commands, services and routes work with: created on start (:mod:`app.lifespan`), closed on
stop, and built in one go.

This module sits below everything that uses it: the job runner, the scheduler and the command
registry are built *on* :class:`Resources`, never held by it, so a command cannot reach the
machinery that runs it. What requests and the scheduler need of this replica's runner (wake it
for a job just queued, make it act on a cancel flag now) goes through :class:`RunnerLink`, which
the runner attaches itself to when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from app.config import Settings
from app.integrations.pg_clients import PgClients
from app.integrations.storage import Storage
from app.integrations.webhooks import Notifier
from app.monitoring.service import MonitoringPools


class _Runner(Protocol):
    def wake(self) -> None: ...

    def runs(self, job_id: UUID) -> bool: ...

    async def check_cancel_now(self) -> None: ...


class RunnerLink:
    """This replica's job runner as the code below it sees it: two signals, no access."""

    def __init__(self) -> None:
        self._runner: _Runner | None = None

    def attach(self, runner: _Runner) -> None:
        self._runner = runner

    def wake(self) -> None:
        """A job was just queued here: look for it now rather than at the next poll."""
        if self._runner is not None:
            self._runner.wake()

    async def cancel_now(self, job_id: UUID) -> None:
        """If the job runs here, act on its cancel flag at once (not at the next heartbeat)."""
        if self._runner is not None and self._runner.runs(job_id):
            await self._runner.check_cancel_now()


@dataclass
class Resources:
    settings: Settings
    pool: Any
    storage: Storage
    monitoring: MonitoringPools
    clients: PgClients
    notifier: Notifier
    runner: RunnerLink = field(default_factory=RunnerLink)
    # Manifests never change once written: cache them by key.
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
