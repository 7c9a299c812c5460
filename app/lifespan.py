"""What the app holds while it runs: the resources (:mod:`app.resources`), and the job runner and
the scheduler built on them. Created on start, closed on stop.

Start-up checks, each a readable failure: the metadata database answers, the storage is usable,
``gpg``/``zstd`` and some version of each PostgreSQL client program are installed (which versions:
:mod:`app.integrations.pg_clients`; a missing major fails only the jobs that need it), and every
recipient key can encrypt, and every location with ``object_lock_days`` can lock objects (its
bucket has an Object Lock configuration).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from fastapi import FastAPI

from app import db
from app.config import ConfigError, Settings
from app.integrations import gpg, pg_clients, zstd
from app.integrations.storage import check_locks, check_locks_at_start, open_copies, open_primary
from app.integrations.webhooks import Notifier
from app.jobs.registry import CLEANUPS, HANDLERS
from app.jobs.runner import JobRunner
from app.monitoring.pools import MonitoringPools
from app.resources import Resources
from app.restore.fetch import sweep_orphans
from app.schedules.scheduler import Scheduler
from app.security import redact

log = structlog.get_logger("pgvault")

@dataclass(frozen=True)
class Services:
    """The app shell's handles: the resources, and the runner and scheduler built on them."""

    resources: Resources
    runner: JobRunner
    scheduler: Scheduler


async def check_tools(settings: Settings) -> pg_clients.PgClients:
    # Each program's own wrapper knows how to tell it is there.
    missing = [name for name, there in (("gpg", gpg.installed()), ("zstd", zstd.installed()))
               if not there]
    if missing:
        raise ConfigError(f"required programs not found on PATH: {', '.join(missing)}")
    clients = await asyncio.to_thread(pg_clients.discover, settings.pg_bin_dirs)
    if absent := clients.missing_programs():
        where = ("PGVAULT_PG_BIN_DIRS" if settings.pg_bin_dirs
                 else f"{pg_clients.DEBIAN_ROOT}/<major>/bin or PATH")
        raise ConfigError(f"no version of {', '.join(absent)} found in {where}: install "
                          "postgresql-client-<major> for your servers' majors")
    log.info("pg_clients", **clients.summary())
    return clients


async def check_keyring(settings: Settings) -> None:
    try:
        await gpg.check_recipients(settings.gpg_home, settings.gpg_recipients)
    except gpg.KeyringError as exc:
        raise ConfigError(f"PGVAULT_GPG_RECIPIENTS / PGVAULT_GPG_HOME: {exc}") from None


def preflight(settings: Settings) -> None:
    """The start-up checks (programs, keyring, metadata database), run before a server starts
    the app: a :class:`ConfigError` raised here can end the process with exit code 2 and one line,
    where a failed lifespan makes uvicorn print a traceback and exit with 3.

    Called while uvicorn's event loop is already running (it loads the app from inside it), so
    the checks get a loop of their own in a worker thread."""
    async def checks() -> None:
        problems = []
        for check in (check_tools(settings), check_keyring(settings),
                      db.check_metadata(settings), check_locks_at_start(settings)):
            try:
                await check
            except ConfigError as exc:
                problems.append(str(exc))
            except Exception as exc:  # unforeseen, still one line (scrubbed of the secrets)
                reason = redact(str(exc), settings.secrets()).replace("\n", " ")[:300]
                problems.append(f"start-up check failed: {type(exc).__name__}: {reason}")
        if problems:
            raise ConfigError("\n".join(problems))

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, checks()).result()


async def start_services(settings: Settings) -> Services:
    clients = await check_tools(settings)
    await check_keyring(settings)
    pool = await db.create_pool(settings)
    primary = await open_primary(settings)
    copies = await open_copies(settings)
    try:
        await check_locks([primary, *copies])  # SPEC 2.15: a lock that cannot hold is no lock
    except ConfigError:
        for location in [primary, *copies]:
            await location.storage.close()
        await pool.close()
        raise
    for path in await asyncio.to_thread(sweep_orphans, settings.work_dir):
        log.warning("scratch_swept", path=str(path))
    notifier = Notifier(settings.webhooks, attempts=settings.webhook_max_attempts,
                        backoff_s=settings.webhook_backoff_s)
    resources = Resources(settings=settings, pool=pool, storage=primary.storage,
                          monitoring=MonitoringPools(settings), clients=clients,
                          notifier=notifier, primary=primary, copies=copies)
    return Services(resources=resources, runner=JobRunner(resources, HANDLERS, CLEANUPS),
                    scheduler=Scheduler(resources))


async def stop_services(services: Services) -> None:
    await services.scheduler.stop()
    await services.runner.stop()
    resources = services.resources
    await resources.notifier.close()
    with contextlib.suppress(Exception):
        await resources.monitoring.close()
    for location in resources.locations:
        with contextlib.suppress(Exception):
            await location.storage.close()
    await resources.pool.close()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        services = await start_services(settings)
    except ConfigError as exc:
        log.error("startup_failed", reason=str(exc))
        raise
    app.state.services = services
    app.state.resources = services.resources
    services.runner.start()
    if settings.scheduler_enabled:
        services.scheduler.start()
    log.info("started", targets=sorted(settings.targets), storage=settings.storage_url,
             runner=services.runner.owner)
    try:
        yield
    finally:
        log.info("stopping")
        await stop_services(services)
