"""All SQL the monitoring views run against a target, each query a named constant.

Every function takes an asyncpg connection and returns plain dicts. Numbers are cast in SQL to
``bigint`` or ``float8`` so the driver hands back ``int`` and ``float``, never ``Decimal``.
"User schemas" means every schema except ``information_schema`` and the reserved ``pg_*`` ones
(``pg_catalog``, ``pg_toast``, temporary schemas).

The bloat estimates follow the well-known estimation queries (ioguix's pgsql-bloat-estimation,
check_postgres): from ``pg_stats`` (``avg_width``, ``null_frac``) and the on-disk layout (page
header, tuple header and null bitmap, MAXALIGN padding, line pointers, fillfactor) they estimate
how many pages the live rows need, and call the rest bloat. They are estimates: a row whose
statistics are missing or unusable (``name`` columns) has ``reliable = false``, and a relation
never analyzed has no estimate at all (``bloat_bytes`` and ``bloat_ratio`` are null).
"""

from __future__ import annotations

from typing import Any

_USER_SCHEMA = "{ns}.nspname <> 'information_schema' AND {ns}.nspname !~ '^pg_'"

# Statistics out of their range (a NaN null fraction from a damaged pg_statistic) would turn
# one table's estimate into NaN and fail the whole view casting it to bigint: such a column
# counts as having no statistics, so its row is estimated from defaults and marked unreliable.
_SANE_STATS = "s.null_frac BETWEEN 0 AND 1 AND s.avg_width >= 0"

# MAXALIGN is 8 on every 64-bit build and 4 on 32-bit ones; the server does not expose it.
_CONSTS = """consts AS (
    SELECT current_setting('block_size')::float8 AS bs,
           CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64'
                THEN 8 ELSE 4 END::float8 AS ma
)"""

# What a bloat estimate (its ``est`` rows) reports, alike for tables and indexes. A negative
# reltuples means never analyzed: no estimate then, only the size.
_BLOAT_VERDICT = """(bs * pages)::bigint AS size_bytes,
       CASE WHEN reltuples >= 0
            THEN (bs * greatest(pages - est_pages, 0))::bigint END AS bloat_bytes,
       CASE WHEN reltuples >= 0
            THEN (greatest(pages - est_pages, 0) / pages)::float8 END AS bloat_ratio,
       fillfactor::int AS fillfactor,
       NOT is_na AS reliable
FROM est"""

# -- connections ---------------------------------------------------------------------------------

ACTIVE_CONNECTIONS_SQL = """
SELECT pid,
       datname AS database,
       usename AS "user",
       application_name,
       host(client_addr) AS client_addr,
       state,
       wait_event_type,
       wait_event,
       left(query, $1) AS query,
       extract(epoch FROM now() - query_start)::float8 AS duration_s,
       backend_type
FROM pg_stat_activity
WHERE state <> 'idle' AND pid <> pg_backend_pid()
ORDER BY query_start NULLS LAST, pid
LIMIT $2
"""

CONNECTIONS_BY_CLIENT_SQL = """
SELECT usename AS "user",
       host(client_addr) AS client_addr,
       count(*)::bigint AS count,
       count(*) FILTER (WHERE state <> 'idle')::bigint AS active
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY usename, host(client_addr)
ORDER BY count(*) DESC, usename, host(client_addr)
LIMIT $1
"""

# Only client backends use max_connections slots; background workers have their own.
CONNECTION_TOTALS_SQL = """
SELECT count(*) FILTER (WHERE backend_type = 'client backend')::bigint AS total,
       current_setting('max_connections')::bigint AS max_connections,
       count(*) FILTER (WHERE state <> 'idle' AND pid <> pg_backend_pid())::bigint AS active,
       count(*) FILTER (WHERE state <> 'idle' AND pid <> pg_backend_pid()
                          AND backend_type = 'client backend'
                          AND now() - query_start > make_interval(secs => $1))::bigint
           AS long_running
FROM pg_stat_activity
"""

# -- bloat ---------------------------------------------------------------------------------------

TABLE_BLOAT_SQL = f"""
WITH {_CONSTS},
cols AS (
    SELECT tbl.oid,
           ns.nspname AS schema,
           tbl.relname AS name,
           tbl.reltuples::float8 AS reltuples,
           tbl.relpages::float8 + coalesce(toast.relpages, 0)::float8 AS pages,
           greatest(coalesce(toast.reltuples, 0), 0)::float8 AS toast_tuples,
           coalesce((regexp_match(array_to_string(tbl.reloptions, ' '),
                                  'fillfactor=([0-9]+)'))[1]::float8, 100) AS fillfactor,
           -- HeapTupleHeaderData is 23 bytes, plus one null-bitmap bit per column when any
           -- column holds nulls
           (23 + CASE WHEN max(coalesce(s.null_frac, 0)) > 0
                      THEN (7 + count(*)) / 8 ELSE 0 END)::float8 AS hdr_bytes,
           sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024))::float8
               AS data_bytes,
           bool_or(att.atttypid = 'pg_catalog.name'::regtype)
               OR count(s.attname) < count(*) OR tbl.reltuples < 0 AS is_na
    FROM pg_class tbl
    JOIN pg_namespace ns ON ns.oid = tbl.relnamespace
    JOIN pg_attribute att ON att.attrelid = tbl.oid AND att.attnum > 0 AND NOT att.attisdropped
    LEFT JOIN pg_stats s ON s.schemaname = ns.nspname AND s.tablename = tbl.relname
                        AND s.attname = att.attname AND NOT s.inherited
                        AND {_SANE_STATS}
    LEFT JOIN pg_class toast ON toast.oid = tbl.reltoastrelid
    WHERE tbl.relkind IN ('r', 'm') AND {_USER_SCHEMA.format(ns="ns")}
    GROUP BY tbl.oid, ns.nspname, tbl.relname, tbl.reltuples, tbl.relpages, tbl.reloptions,
             toast.relpages, toast.reltuples
),
est AS (
    SELECT c.*, consts.bs,
           -- rows needed at this fillfactor: 24-byte page header, 4-byte line pointer per
           -- row, header and data each padded to MAXALIGN; TOAST rows counted 4 per page
           ceil(greatest(c.reltuples, 0)
                / ((consts.bs - 24) * c.fillfactor
                   / (100 * (4 + ceil(c.hdr_bytes / consts.ma) * consts.ma
                                + ceil(c.data_bytes / consts.ma) * consts.ma))))
             + ceil(c.toast_tuples / 4) AS est_pages
    FROM cols c, consts
    WHERE c.pages > 0
)
SELECT schema,
       name AS "table",
       {_BLOAT_VERDICT}
ORDER BY reliable DESC, bloat_bytes DESC NULLS LAST, size_bytes DESC, schema, "table"
LIMIT $1
"""

INDEX_BLOAT_SQL = f"""
WITH {_CONSTS},
idx AS (
    SELECT ci.oid AS idxoid,
           i.indrelid AS tbloid,
           ns.nspname AS schema,
           tbl.relname AS table_name,
           ci.relname AS index_name,
           i.indkey,
           i.indnatts,
           ci.reltuples::float8 AS reltuples,
           ci.relpages::float8 AS pages,
           coalesce((regexp_match(array_to_string(ci.reloptions, ' '),
                                  'fillfactor=([0-9]+)'))[1]::float8, 90) AS fillfactor
    FROM pg_index i
    JOIN pg_class ci ON ci.oid = i.indexrelid
    JOIN pg_class tbl ON tbl.oid = i.indrelid
    JOIN pg_namespace ns ON ns.oid = ci.relnamespace
    JOIN pg_am am ON am.oid = ci.relam
    WHERE am.amname = 'btree' AND i.indisvalid AND ci.relpages > 0
      AND {_USER_SCHEMA.format(ns="ns")}
),
cols AS (
    -- one row per index column (int2vector subscripts start at 0): a plain column takes its
    -- statistics from the table, an expression from the index (ANALYZE gathers those too)
    SELECT idx.idxoid, idx.schema,
           CASE WHEN ta.attnum IS NULL THEN idx.index_name ELSE idx.table_name END AS stats_rel,
           coalesce(ta.attname, ia.attname) AS attname,
           coalesce(ta.atttypid, ia.atttypid) AS atttypid
    FROM idx
    CROSS JOIN LATERAL generate_series(0, idx.indnatts - 1) AS pos
    LEFT JOIN pg_attribute ta ON idx.indkey[pos] <> 0 AND ta.attrelid = idx.tbloid
                             AND ta.attnum = idx.indkey[pos]
    LEFT JOIN pg_attribute ia ON idx.indkey[pos] = 0 AND ia.attrelid = idx.idxoid
                             AND ia.attnum = pos + 1
),
widths AS (
    SELECT c.idxoid,
           max(coalesce(s.null_frac, 0)) > 0 AS has_nulls,
           sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024))::float8
               AS data_bytes,
           bool_or(c.atttypid = 'pg_catalog.name'::regtype) OR count(s.attname) < count(*)
               AS is_na
    FROM cols c
    LEFT JOIN pg_stats s ON s.schemaname = c.schema AND s.tablename = c.stats_rel
                        AND s.attname = c.attname AND NOT s.inherited
                        AND {_SANE_STATS}
    GROUP BY c.idxoid
),
est AS (
    SELECT idx.*, w.is_na OR idx.reltuples < 0 AS is_na, consts.bs,
           -- a btree page: 24-byte header, 16-byte special space; per row a 4-byte line
           -- pointer, IndexTupleData (8 bytes, +4 for the null bitmap) and the key data,
           -- each padded to MAXALIGN; one metapage
           1 + ceil(greatest(idx.reltuples, 0)
                    / greatest(floor((consts.bs - 24 - 16) * idx.fillfactor
                        / (100 * (4 + ceil((8 + CASE WHEN w.has_nulls THEN 4 ELSE 0 END)
                                           / consts.ma) * consts.ma
                                    + ceil(w.data_bytes / consts.ma) * consts.ma))), 1))
               AS est_pages
    FROM idx JOIN widths w ON w.idxoid = idx.idxoid, consts
)
SELECT schema,
       table_name AS "table",
       index_name AS "index",
       {_BLOAT_VERDICT}
ORDER BY reliable DESC, bloat_bytes DESC NULLS LAST, size_bytes DESC, schema, "index"
LIMIT $1
"""

# -- indexes -------------------------------------------------------------------------------------

# Never scanned since the statistics were reset, and not enforcing anything: an index behind a
# primary key, unique or exclusion constraint (or any unique index) is needed even if unread.
# Invalid indexes are reported apart. The window totals are taken before LIMIT.
UNUSED_INDEXES_SQL = """
SELECT s.schemaname AS schema,
       s.relname AS "table",
       s.indexrelname AS "index",
       pg_relation_size(s.indexrelid)::bigint AS size_bytes,
       pg_get_indexdef(s.indexrelid) AS definition,
       count(*) OVER ()::bigint AS total_count,
       (sum(pg_relation_size(s.indexrelid)) OVER ())::bigint AS total_bytes
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0
  AND i.indisvalid
  AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)
ORDER BY size_bytes DESC, schema, "index"
LIMIT $1
"""

INVALID_INDEXES_SQL = """
SELECT ns.nspname AS schema,
       tbl.relname AS "table",
       ci.relname AS "index",
       pg_get_indexdef(i.indexrelid) AS definition,
       count(*) OVER ()::bigint AS total_count
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class tbl ON tbl.oid = i.indrelid
JOIN pg_namespace ns ON ns.oid = ci.relnamespace
WHERE NOT i.indisvalid
  AND ns.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY ns.nspname, ci.relname
LIMIT $1
"""

STATS_RESET_SQL = """
SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()
"""

# -- tables --------------------------------------------------------------------------------------

TABLES_SQL = """
SELECT schemaname AS schema,
       relname AS "table",
       n_live_tup::bigint AS n_live_tup,
       n_dead_tup::bigint AS n_dead_tup,
       CASE WHEN n_live_tup + n_dead_tup > 0
            THEN n_dead_tup::float8 / (n_live_tup + n_dead_tup) ELSE 0 END AS dead_ratio,
       last_vacuum,
       last_autovacuum,
       last_analyze,
       last_autoanalyze,
       pg_total_relation_size(relid)::bigint AS total_bytes
FROM pg_stat_user_tables
ORDER BY n_dead_tup DESC, total_bytes DESC NULLS LAST, schema, "table"
LIMIT $1
"""


def _dicts(rows: list[Any]) -> list[dict[str, Any]]:
    return [dict(row) for row in rows]


async def active_connections(conn: Any, *, query_chars: int, limit: int) -> list[dict[str, Any]]:
    """Sessions doing something (not idle), ours excluded; query text cut to ``query_chars``."""
    return _dicts(await conn.fetch(ACTIVE_CONNECTIONS_SQL, query_chars, limit))


async def connections_by_client(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    return _dicts(await conn.fetch(CONNECTIONS_BY_CLIENT_SQL, limit))


async def connection_totals(conn: Any, *, long_query_seconds: float) -> dict[str, Any]:
    return dict(await conn.fetchrow(CONNECTION_TOTALS_SQL, float(long_query_seconds)))


async def table_bloat(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    return _dicts(await conn.fetch(TABLE_BLOAT_SQL, limit))


async def index_bloat(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    return _dicts(await conn.fetch(INDEX_BLOAT_SQL, limit))


async def unused_indexes(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    """Rows carry ``total_count`` and ``total_bytes`` over all unused indexes, before LIMIT."""
    return _dicts(await conn.fetch(UNUSED_INDEXES_SQL, limit))


async def invalid_indexes(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    """Rows carry ``total_count`` over all invalid indexes, before LIMIT."""
    return _dicts(await conn.fetch(INVALID_INDEXES_SQL, limit))


async def stats_reset(conn: Any) -> Any:
    return await conn.fetchval(STATS_RESET_SQL)


async def tables(conn: Any, *, limit: int) -> list[dict[str, Any]]:
    return _dicts(await conn.fetch(TABLES_SQL, limit))
