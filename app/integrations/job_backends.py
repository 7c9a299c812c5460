"""What jobs' backends are doing on a server, read for the stall watchdog (SPEC 2.14).

Every connection a job makes carries its application_name (``pgvault/<kind>/<job id>``, see
``app.integrations.target_db``), libpq tools included. :func:`read` finds those backends, with one
query, and says of each:

- whether it *works*: active, and waiting neither on a lock nor on its client. A pg_dump held by
  another session's lock waits on a ``Lock``; a ``COPY ... TO STDOUT`` whose reader stopped (the
  pipeline behind it is stuck on storage that no longer answers) waits on its ``Client``. Neither
  is progress. A ``CREATE INDEX`` busy sorting, an ``ANALYZE`` reading, a ``REFRESH`` computing
  are.
- its progress counters, from PostgreSQL's progress views where the server has them:
  ``pg_stat_progress_copy`` (bytes, 14+), ``pg_stat_progress_create_index`` (blocks and tuples,
  12+), ``pg_stat_progress_analyze`` (sample blocks, 13+). Counters that move are progress
  whatever the backend waits on (a COPY fed by a slow client still advances).

The query reads statistics views only; it runs on any connection to the server (pg_stat_activity
is cluster-wide), by a role that can see the job's sessions (the same role, or pg_read_all_stats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Waits that are not progress: another session's lock, or the client not reading or writing.
IDLE_WAITS = ("Lock", "Client")

_COPY = ("c.relid AS copy_relid, c.bytes_processed AS copy_bytes, "
         "c.tuples_processed AS copy_tuples",
         "LEFT JOIN pg_catalog.pg_stat_progress_copy c ON c.pid = a.pid")
_INDEX = ("i.index_relid, i.blocks_done AS index_blocks, i.tuples_done AS index_tuples",
          "LEFT JOIN pg_catalog.pg_stat_progress_create_index i ON i.pid = a.pid")
_ANALYZE = ("z.relid AS analyze_relid, z.sample_blks_scanned AS analyze_blocks",
            "LEFT JOIN pg_catalog.pg_stat_progress_analyze z ON z.pid = a.pid")

BACKENDS_SQL = """
SELECT a.application_name AS name, a.pid,
       coalesce(a.state = 'active' AND a.wait_event_type IS DISTINCT FROM 'Lock'
                AND a.wait_event_type IS DISTINCT FROM 'Client', false) AS working,
       CASE WHEN a.state = 'active' THEN a.wait_event_type END AS waits_on,
       current_setting('block_size')::int8 AS block_size{columns}
FROM pg_catalog.pg_stat_activity a
{joins}
WHERE a.application_name = ANY($1::text[]) AND a.pid <> pg_catalog.pg_backend_pid()
"""


def backends_sql(server_major: int) -> str:
    """The query for a server of this major: only the progress views it has."""
    parts = [p for since, p in ((14, _COPY), (12, _INDEX), (13, _ANALYZE)) if server_major >= since]
    return BACKENDS_SQL.format(columns="".join(f",\n       {cols}" for cols, _ in parts),
                               joins="\n".join(join for _, join in parts))


@dataclass(frozen=True)
class Backend:
    """One backend of a job: whether it works, and its progress counters by name (each with the
    bytes one unit stands for; 0 for counts that are not bytes, such as tuples)."""

    name: str
    pid: int
    working: bool
    waits_on: str | None  # an active backend's wait_event_type ("Lock", "Client", "IO", ...)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)


def _counters(row: Any) -> dict[str, tuple[int, int]]:
    block = int(row["block_size"])
    found: dict[str, tuple[int, int]] = {}
    for relid, kinds in (("copy_relid", (("copy_bytes", 1), ("copy_tuples", 0))),
                         ("index_relid", (("index_blocks", block), ("index_tuples", 0))),
                         ("analyze_relid", (("analyze_blocks", block),))):
        if row.get(relid) is None:  # no such command running, or a server without the view
            continue
        for name, unit in kinds:
            if row.get(name) is not None:
                found[f"{name}:{row[relid]}"] = (int(row[name]), unit)
    return found


async def read(conn: Any, names: list[str]) -> list[Backend]:
    """The backends whose application_name is one of ``names`` (one query; asyncpg ``conn``)."""
    sql = backends_sql(conn.get_server_version().major)
    rows = await conn.fetch(sql, names)
    return [Backend(name=r["name"], pid=r["pid"], working=r["working"], waits_on=r["waits_on"],
                    counters=_counters(r)) for r in rows]
