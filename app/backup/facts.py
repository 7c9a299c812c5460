"""What a backup records about its database, read inside the exported snapshot.

All SQL run against the target for a backup lives here. Every fact is read in the transaction whose
snapshot pg_dump uses, so the manifest describes exactly what the dump holds: a restore can later be
checked against these row counts to the row. Identifiers are quoted by the server (``format('%I')``)
from its own catalog, never by string formatting in Python.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from app.integrations.target_catalog import (
    INVALID_INDEXES,
    NOT_VALID_CONSTRAINTS,
    SUBSCRIPTIONS,
    row_count_statement,
)

SERVER_FACTS = """
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       current_database() AS database,
       pg_database_size(current_database()) AS database_size_bytes,
       pg_encoding_to_char(d.encoding) AS encoding, d.datcollate AS collate,
       d.datctype AS ctype
FROM pg_database d WHERE d.datname = current_database()
"""

# Ordinary tables and partitions (partitioned parents hold no rows of their own), without
# extension members (pg_dump leaves their data out) and without excluded schemas.
TABLES = f"""
SELECT n.nspname AS schema, c.relname AS name,
       {row_count_statement("n.nspname", "c.relname")} AS count_sql
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT (n.nspname = ANY($1::text[]))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

MATVIEWS = """
SELECT schemaname AS schema, matviewname AS name, ispopulated AS populated
FROM pg_matviews WHERE NOT (schemaname = ANY($1::text[])) ORDER BY 1, 2
"""

EXTENSIONS = "SELECT extname AS name, extversion AS version FROM pg_extension ORDER BY 1"

# The schemas pg_dump writes: every schema but the system ones, the excluded ones and those that
# belong to an extension (pg_dump leaves those to CREATE EXTENSION). An in-place restore replaces
# exactly these: names from the catalog, never from a tool's text.
SCHEMAS = """
SELECT n.nspname AS name, pg_get_userbyid(n.nspowner) AS owner,
       obj_description(n.oid, 'pg_namespace') AS comment
FROM pg_namespace n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT (n.nspname = ANY($1::text[]))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                  AND d.objid = n.oid AND d.deptype = 'e')
ORDER BY 1
"""

# The objects pg_dump writes that live in no schema, so DROP SCHEMA leaves them and the dump's
# plain CREATE then fails on them: user-made (OID past the built-in range, as pg_dump decides) and
# not an extension's. Each is named by its identifiers as the catalog holds them (a cast or a
# transform by its types' schema and name; a user mapping for PUBLIC by a null role), in an order
# that drops dependents first (a user mapping needs its server). The restore has its server quote
# them. Not here: procedural languages (pg_dump writes CREATE OR REPLACE for one whose handler it
# does not dump; one whose handler it dumps goes with that handler's schema) and subscriptions
# (named by SUBSCRIPTIONS below, read where pg_subscription may be unreadable).
SCHEMALESS_OBJECTS = """
WITH user_made AS (
    SELECT o.classid, o.objid FROM (
        SELECT 'pg_event_trigger'::regclass AS classid, oid AS objid FROM pg_event_trigger
        UNION ALL SELECT 'pg_publication'::regclass, oid FROM pg_publication
        UNION ALL SELECT 'pg_foreign_server'::regclass, oid FROM pg_foreign_server
        UNION ALL SELECT 'pg_foreign_data_wrapper'::regclass, oid FROM pg_foreign_data_wrapper
        UNION ALL SELECT 'pg_cast'::regclass, oid FROM pg_cast
        UNION ALL SELECT 'pg_transform'::regclass, oid FROM pg_transform
        UNION ALL SELECT 'pg_am'::regclass, oid FROM pg_am) o
    WHERE o.objid >= 16384
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.classid
                      AND d.objid = o.objid AND d.deptype = 'e')
),
typ AS (
    SELECT t.oid, n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
),
objects AS (
    SELECT 1 AS ord, 'event trigger' AS type, ARRAY[e.evtname::text] AS names
    FROM pg_event_trigger e JOIN user_made u ON u.objid = e.oid
    UNION ALL
    SELECT 2, 'publication', ARRAY[p.pubname::text]
    FROM pg_publication p JOIN user_made u ON u.objid = p.oid
    UNION ALL
    SELECT 3, 'user mapping',
           ARRAY[CASE WHEN m.umuser = 0 THEN NULL ELSE m.usename::text END, m.srvname::text]
    FROM pg_user_mappings m JOIN user_made u ON u.objid = m.srvid
    UNION ALL
    SELECT 4, 'server', ARRAY[s.srvname::text]
    FROM pg_foreign_server s JOIN user_made u ON u.objid = s.oid
    UNION ALL
    SELECT 5, 'foreign-data wrapper', ARRAY[w.fdwname::text]
    FROM pg_foreign_data_wrapper w JOIN user_made u ON u.objid = w.oid
    UNION ALL
    SELECT 6, 'cast', ARRAY[s.nspname, s.typname, t.nspname, t.typname]::text[]
    FROM pg_cast c JOIN user_made u ON u.objid = c.oid
    JOIN typ s ON s.oid = c.castsource JOIN typ t ON t.oid = c.casttarget
    UNION ALL
    SELECT 7, 'transform', ARRAY[ty.nspname, ty.typname, l.lanname]::text[]
    FROM pg_transform tr JOIN user_made u ON u.objid = tr.oid
    JOIN typ ty ON ty.oid = tr.trftype JOIN pg_language l ON l.oid = tr.trflang
    UNION ALL
    SELECT 8, 'access method', ARRAY[a.amname::text]
    FROM pg_am a JOIN user_made u ON u.objid = a.oid
)
SELECT type, names FROM objects ORDER BY ord, names
"""

# The database's own properties, which pg_dump writes only with --create and pg_dumpall
# --globals-only no longer writes: its grants (aclexplode of datacl, NULL when it has the
# defaults; grantee 0 is PUBLIC), its settings and its roles' settings in it (ALTER DATABASE SET,
# ALTER ROLE IN DATABASE SET), and its comment. Role names are kept as data.
DATABASE_PROPERTIES = """
SELECT pg_get_userbyid(d.datdba) AS owner, shobj_description(d.oid, 'pg_database') AS comment,
       CASE WHEN d.datacl IS NOT NULL THEN (
           SELECT coalesce(json_agg(json_build_object(
               'grantee', CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
               'privilege', a.privilege_type, 'grantable', a.is_grantable)
               ORDER BY a.grantee, a.privilege_type), '[]')::text
           FROM aclexplode(d.datacl) a) END AS acl
FROM pg_database d WHERE d.datname = current_database()"""

DATABASE_SETTINGS = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END AS role,
       split_part(u.setting, '=', 1) AS name,
       substr(u.setting, strpos(u.setting, '=') + 1) AS value
FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) WITH ORDINALITY AS u(setting, i)
WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.setrole <> 0, 1, u.i"""


async def server_facts(conn: Any) -> dict[str, Any]:
    return dict(await conn.fetchrow(SERVER_FACTS))


async def catalog_facts(conn: Any, exclude_schemas: list[str]) -> dict[str, Any]:
    tables = [dict(r) for r in await conn.fetch(TABLES, exclude_schemas)]
    matviews = [dict(r) for r in await conn.fetch(MATVIEWS, exclude_schemas)]
    try:
        async with conn.transaction():  # a savepoint: a failure here must not abort the snapshot
            subscriptions = [dict(r) for r in await conn.fetch(SUBSCRIPTIONS)]
    except asyncpg.PostgresError:  # pg_subscription may be unreadable on managed services
        subscriptions = []
    extensions = [dict(r) for r in await conn.fetch(EXTENSIONS)]
    schemas = [dict(r) for r in await conn.fetch(SCHEMAS, exclude_schemas)]
    schemaless = [dict(r) for r in await conn.fetch(SCHEMALESS_OBJECTS)]
    return {"tables": tables, "materialized_views": matviews,
            "subscriptions": subscriptions, "extensions": extensions,
            "schemas": schemas, "schemaless_objects": schemaless,
            # What the source itself has that a restore test would otherwise blame on the
            # archive. Excluded schemas are kept: an in-place restore leaves them in the database.
            "invalid_indexes": [dict(r) for r in await conn.fetch(INVALID_INDEXES)],
            "not_valid_constraints": [dict(r) for r in await conn.fetch(NOT_VALID_CONSTRAINTS)]}


async def database_properties(conn: Any) -> dict[str, Any]:
    """Grants, settings and comment of the database itself (see :data:`DATABASE_PROPERTIES`).
    Setting values may be secrets (an API's JWT secret often is one): they belong in an
    encrypted object, never in the manifest."""
    row = await conn.fetchrow(DATABASE_PROPERTIES)
    return {"owner": row["owner"], "comment": row["comment"],
            "acl": json.loads(row["acl"]) if row["acl"] is not None else None,
            "settings": [dict(r) for r in await conn.fetch(DATABASE_SETTINGS)]}


def properties_summary(props: dict[str, Any]) -> dict[str, Any]:
    """What the manifest may show of them: grants and the names of settings, no values."""
    return {"acl": props["acl"], "comment": props["comment"] is not None,
            "settings": [{"role": s["role"], "name": s["name"]} for s in props["settings"]]}


async def count_rows(conn: Any, tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counted = []
    for table in tables:
        rows = await conn.fetchval(table["count_sql"])
        counted.append({"schema": table["schema"], "name": table["name"], "rows": rows})
    return counted
