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

from cachetools import LRUCache

from app.backup.manifest import Manifest
from app.config import Settings
from app.integrations.pg_clients import PgClients
from app.integrations.storage import Location, Storage
from app.integrations.webhooks import Notifier
from app.monitoring.pools import MonitoringPools


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


class ManifestCache:
    """Manifests read from storage, by key, in this process: its one owner.

    A manifest never changes once written, so a cached one is right for as long as its archive
    exists; code that must not act on an archive another replica deleted reads storage instead
    (``load_manifest(..., fresh=True)``) and code that deletes archives forgets them here. Bounded
    (least recently used first out): a long-lived service sees every archive of every target.
    """

    MAX_ENTRIES = 5000

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._docs: LRUCache[str, Manifest] = LRUCache(maxsize=max_entries)

    def get(self, key: str) -> Manifest | None:
        return self._docs.get(key)

    def put(self, key: str, doc: Manifest) -> None:
        self._docs[key] = doc

    def forget(self, key: str) -> None:
        self._docs.pop(key, None)

    def clear(self) -> None:
        """Forget every manifest (another replica may have deleted archives)."""
        self._docs.clear()


@dataclass
class Resources:
    settings: Settings
    pool: Any
    storage: Storage
    monitoring: MonitoringPools
    clients: PgClients
    notifier: Notifier
    runner: RunnerLink = field(default_factory=RunnerLink)
    manifests: ManifestCache = field(default_factory=ManifestCache)
    # The primary storage as a location (``storage`` is its storage), and the copies (SPEC 2.15).
    primary: Location | None = None
    copies: list[Location] = field(default_factory=list)

    @property
    def locations(self) -> list[Location]:
        """The primary first, then every copy."""
        primary = self.primary or Location(name="primary", url=self.settings.storage_url,
                                           storage=self.storage)
        return [primary, *self.copies]
