"""The job registry: which command runs each kind of job, and what undoes a dead worker's leftovers.

It sits above the commands it names and beside the runner that reads it (both built by
:mod:`app.lifespan`); no command imports it."""

from __future__ import annotations

from app.archives.reconcile import run_reconcile
from app.archives.retention import run_retention
from app.backup.command import cleanup_backup, run_backup
from app.jobs.context import Cleanup, Handler
from app.maintenance.command import run_maintenance
from app.restore.command import cleanup_restore, run_restore
from app.restore.verify import cleanup_verify, run_verify

HANDLERS: dict[str, Handler] = {
    "backup": run_backup,
    "restore": run_restore,
    "verify": run_verify,
    "maintenance": run_maintenance,
    "retention": run_retention,
    "reconcile": run_reconcile,
}

CLEANUPS: dict[str, Cleanup] = {
    "backup": cleanup_backup,
    "restore": cleanup_restore,
    "verify": cleanup_verify,
}
