"""The client programs a restore or verification runs, chosen at its first step (SPEC 2.13).

The destination server's major decides (asked over a short connection before anything is
downloaded), together with the archive's pg_dump major (pg_restore must read its format). A job
whose server no installed client fits fails here, saying which package to install.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.backup.manifest import Manifest
from app.config import PgDsn
from app.errors import StepFailed
from app.integrations.pg_clients import (
    Client,
    NoFittingClient,
    PgClients,
    RestoreTools,
    archive_major,
)
from app.integrations.target_db import connect_target
from app.steps import Step


async def restore_tools(clients: PgClients, dsn: PgDsn, doc: Manifest) -> RestoreTools:
    """pg_restore and psql for the server behind ``dsn`` and the archive of manifest ``doc``."""
    conn = await connect_target(dsn)
    try:
        major = int(conn.get_server_version().major)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
    try:
        return RestoreTools.choose(clients, major, archive_major(doc.pg_dump_version))
    except NoFittingClient as exc:
        raise StepFailed(Step.CLIENT_PROGRAMS, str(exc)) from None


def archive_reader(clients: PgClients, doc: Manifest) -> Client:
    """A pg_restore that reads the archive (``--list``), whatever server it goes to."""
    major = archive_major(doc.pg_dump_version)
    try:
        return clients.choose("pg_restore", major, archive_major=major)
    except NoFittingClient as exc:
        raise StepFailed(Step.CLIENT_PROGRAMS, str(exc)) from None
