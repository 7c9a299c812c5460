"""Argument vectors for pg_dump, pg_dumpall, pg_restore and psql (zstd: ``app.integrations.zstd``).

Each PostgreSQL stage runs the :class:`~app.integrations.pg_clients.Client` chosen for the server at
hand (its absolute path), never whatever ``PATH`` finds first.

Connection parameters, the password included, reach the tools through libpq's environment
variables (``PGHOST``, ``PGPASSWORD``, ...) built from the parsed DSN, so nothing secret is ever in
argv (``ps`` shows argv to every user of the host). The database a tool connects to comes from
``PGDATABASE`` too: libpq never expands an environment value into a connection string, and no name
can turn into an option. ``--no-password`` makes a missing password an error rather than a prompt.
``PGAPPNAME`` is the running job's application_name (``app.integrations.target_db``), so its
backends can be found and ended when the job ends early.

Exit codes: every tool here exits 0 on success and non-zero on failure; pg_restore exits 1 when it
finished with errors (it prints ``errors ignored on restore: N``).
"""

from __future__ import annotations

import re
from pathlib import Path

from app.config import PgDsn
from app.integrations.pg_clients import Client
from app.integrations.process import Stage
from app.integrations.target_db import JOB_APPLICATION_NAME


def _env(dsn: PgDsn, database: str | None = None) -> dict[str, str]:
    """libpq's environment for ``dsn``, with the running job's application_name (so its server
    backends can be found and ended with it)."""
    env = dsn.libpq_env(database)
    if (job := JOB_APPLICATION_NAME.get()) is not None:
        env["PGAPPNAME"] = job
    return env


def pg_dump_stage(client: Client, dsn: PgDsn, *, snapshot: str, lock_wait_timeout_s: int,
                  exclude_schemas: list[str]) -> Stage:
    argv = [client.path, "--format=custom", "--compress=0", "--no-password",
            f"--snapshot={snapshot}", f"--lock-wait-timeout={lock_wait_timeout_s}s"]
    # Each name as a quoted pattern: matched exactly, as the manifest's facts match it (unquoted,
    # pg_dump would fold "Sales" to sales and read "*", "?" and "." as wildcards and separators).
    argv += [f"--exclude-schema={exact_pattern(name)}" for name in exclude_schemas]
    return Stage("pg_dump", argv, env=_env(dsn))


def exact_pattern(name: str) -> str:
    """A pg_dump name pattern that matches ``name`` and nothing else: inside double quotes a
    pattern's characters are literal (``""`` stands for one ``"``)."""
    return '"' + name.replace('"', '""') + '"'


def pg_dumpall_globals_stage(client: Client, dsn: PgDsn) -> Stage:
    # --database (long form with '=') names the database to connect to; the name was validated
    # at configuration (no leading '-', no '=').
    argv = [client.path, "--globals-only", "--no-role-passwords", "--no-password",
            f"--database={dsn.database}"]
    return Stage("pg_dumpall", argv, env=_env(dsn))


def pg_restore_list_stage(client: Client, dump: Path) -> Stage:
    return Stage("pg_restore --list", [client.path, "--list", "--", str(dump)])


def toc_entries(toc: str, *kinds: str) -> list[str]:
    """The lines of ``pg_restore --list`` output (``<id>; <oid> <oid> KIND schema name owner``)
    of the entries of one of ``kinds`` that have no schema (``KIND - ...``), unchanged, for
    ``--use-list``. Chosen by their type, which pg_dump writes first; no name is read from them
    (pg_restore writes a newline in a name as a space, so a name cannot start a line).
    """
    starts = tuple(f"{kind} - " for kind in kinds)
    found = []
    for line in toc.splitlines():
        parts = line.split(None, 3)
        if not line.startswith(";") and len(parts) == 4 and parts[3].startswith(starts):
            found.append(line)
    return found


def pg_restore_stage(client: Client, dsn: PgDsn, database: str, dump: Path, *, jobs: int,
                     sections: tuple[str, ...] = ()) -> Stage:
    """Restore into an existing (new, empty) database, ``jobs`` at a time; only ``sections``
    (``pre-data``, ``data``, ``post-data``) when given."""
    argv = [client.path, "--no-password", "--exit-on-error"]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    argv += [f"--section={section}" for section in sections]
    # The target database as a connection string built here: a name can never become an option
    # or smuggle in other parameters.
    argv += [f"--dbname={conninfo_dbname(database)}", "--", str(dump)]
    return Stage("pg_restore", argv, env=_env(dsn, database))


def conninfo_dbname(database: str) -> str:
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def pg_restore_script_stage(client: Client, dump: Path) -> Stage:
    """The dump as one SQL script on stdout (no connection), framed by one ``BEGIN;`` and one
    final ``COMMIT;``: without ``--single-transaction`` pg_restore wraps large objects in a
    ``BEGIN; ... COMMIT;`` of their own, which would commit an enclosing transaction midway."""
    return Stage("pg_restore -f -",
                 [client.path, "--single-transaction", "--file=-", "--", str(dump)])


def pg_restore_selection_stage(client: Client, dump: Path, selection: Path) -> Stage:
    """The SQL of just the table-of-contents entries listed in ``selection`` (no connection),
    without owners, privileges or comments: for large objects, nothing but their ``lo_create``
    calls, no name that anyone chose."""
    argv = [client.path, f"--use-list={selection}", "--file=-", "--no-owner",
            "--no-privileges", "--no-comments"]
    return Stage("pg_restore --use-list", [*argv, "--", str(dump)])


def pg_restore_definitions_stage(client: Client, dsn: PgDsn, database: str, dump: Path,
                                 selection: Path) -> Stage:
    """Restore just the entries listed in ``selection`` into ``database``, without owners,
    privileges or comments (a scratch database, to read names back from its catalog)."""
    argv = [client.path, "--no-password", "--exit-on-error", "--no-owner", "--no-privileges",
            "--no-comments", f"--use-list={selection}",
            f"--dbname={conninfo_dbname(database)}", "--", str(dump)]
    return Stage("pg_restore --use-list", argv, env=_env(dsn, database))


def psql_stage(client: Client, dsn: PgDsn, database: str, sql_file: Path | None, *,
               single_transaction: bool = False) -> Stage:
    """psql running ``sql_file`` (or stdin), stopping at the first error (exit code 3)."""
    argv = [client.path, "--no-password", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
            f"--file={sql_file if sql_file is not None else '-'}"]
    if single_transaction:
        argv.append("--single-transaction")
    return Stage("psql", argv, env=_env(dsn, database))


# The lines a pg_restore script opens with (pg_backup_archiver.c's fixed output state, comments,
# psql's \restrict) up to the first object's statement; the SETs there name server settings.
_HEAD_LINE = re.compile(
    rb"^(?:|--.*|\\restrict .*|BEGIN;|SELECT pg_catalog\.set_config\(.*|SET .*)$")
_HEAD_LINE_MAX = 64 * 1024  # no head line is this long: a longer one is an object's statement
_SET_LINE = re.compile(rb"^SET ([a-z_]+) = .*;$")


class ScriptHeadFitter:
    """Makes a newer pg_restore's script fit an older server: drops the ``SET name = ...;`` lines
    of its head whose setting the destination does not have (pg_restore 17 writes
    ``SET transaction_timeout = 0;``, which a 15 or 16 server rejects, and psql then stops).

    Only the head is touched: it ends at the first line that is not a comment, ``BEGIN;`` or a
    setting, so no object's statement or row data is ever looked at. Feed the script in chunks
    with :meth:`feed`; :meth:`finish` returns what is still held back."""

    def __init__(self, known_settings: set[str]) -> None:
        self.known = known_settings
        self.dropped: list[str] = []
        self._pending = b""
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        self._pending += chunk
        out = bytearray()
        while (end := self._pending.find(b"\n")) >= 0:
            line = self._pending[:end]
            if not _HEAD_LINE.match(line):
                self._done = True
                break
            self._pending = self._pending[end + 1:]
            setting = _SET_LINE.match(line)
            if setting and setting.group(1).decode() not in self.known:
                self.dropped.append(setting.group(1).decode())
                continue
            out += line + b"\n"
        if len(self._pending) > _HEAD_LINE_MAX:
            self._done = True
        if self._done:
            out += self._pending
            self._pending = b""
        return bytes(out)

    def finish(self) -> bytes:
        rest, self._pending, self._done = self._pending, b"", True
        return rest
