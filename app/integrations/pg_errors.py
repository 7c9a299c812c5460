"""PostgreSQL and network errors in an operator's words.

Job errors and summaries are read by people and bots: ``InvalidCatalogNameError`` tells them less
than ``database "x" does not exist``. Errors are matched by SQLSTATE (asyncpg keys its classes by
it) or by exception class, never by message text. Names come from pgvault's own configuration
(the target's host, user, database), so the words do not depend on the server's language. A
SQLSTATE with no words of its own falls back to the server's primary message, which names no
secret and quotes no row data (asyncpg keeps ``DETAIL`` apart, and it is not used).
"""

from __future__ import annotations

import socket
from typing import Any

import asyncpg

# SQLSTATE -> words; {database}, {user}, {host} and {message} are filled in by :func:`describe`.
SQLSTATE_WORDS: dict[str, str] = {
    "3D000": 'database "{database}" does not exist',
    "28P01": 'password authentication failed for user "{user}"',
    "28000": 'the server refused user "{user}": the role does not exist or pg_hba.conf has no '
             "entry for it",
    "42501": 'user "{user}" lacks a privilege this needs: {message}',
    "42P04": 'database "{database}" already exists',
    "53300": "the server has no free connection slots (too many connections)",
    "53100": "the server's disk is full",
    "53200": "the server is out of memory",
    "57P03": "the server is starting up, shutting down or in recovery and accepts no connections",
    "57P01": "the server's administrator ended the connection (shutdown or pg_terminate_backend)",
    "57P02": "the server crashed and ended the connection",
    "57014": "a statement was cancelled (a statement timeout, or a request to cancel)",
    "55P03": "a lock could not be obtained in time: another session holds it",
    "40P01": "a deadlock with another session ended the statement",
    "25006": "the server is read-only (a standby?)",
}


def describe(exc: BaseException, *, host: str = "", port: int | None = None,
             user: str = "", database: str = "") -> str:
    """``exc`` (an asyncpg, network or timeout error) as one line of words."""
    where = f"{host}:{port}" if host and port else host or "the server"
    if isinstance(exc, asyncpg.PostgresError):
        message = str(getattr(exc, "message", "") or "").strip() or "no message"
        words = SQLSTATE_WORDS.get(exc.sqlstate or "")
        if words is not None:
            return words.format(database=database, user=user, host=where, message=message)
        if (exc.sqlstate or "").startswith("08"):
            return f"the connection to {where} failed: {message}"
        return f"the server answered: {message} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        return f"the connection to {where} was closed in the middle of an operation"
    if isinstance(exc, asyncpg.InterfaceError):
        return f"the database driver could not go on: {exc}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {where} (is PostgreSQL running there?)"
    if isinstance(exc, socket.gaierror):
        return f'the host name "{host}" cannot be resolved'
    if isinstance(exc, ConnectionError):
        return f"the connection to {where} broke: {exc.strerror or 'reset by the peer'}"
    if isinstance(exc, OSError):
        return f"a system error: {exc.strerror or 'no detail'}"
    return f"an unexpected error ({exc.__class__.__name__}) reaching {where}"


def is_database_error(exc: BaseException) -> bool:
    """Whether :func:`describe` has words for ``exc``."""
    errors: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError,
                                               OSError, TimeoutError)
    return isinstance(exc, errors)


def describe_for(exc: BaseException, dsn: Any, database: str | None = None) -> str:
    """:func:`describe` with a target's host, port, user and database (a ``PgDsn``)."""
    return describe(exc, host=dsn.host, port=dsn.port, user=dsn.user,
                    database=database or dsn.database)
