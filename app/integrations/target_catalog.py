"""Catalog SQL that both a backup (reading the source) and a restore (checking the result) run
against a target database, so that what is recorded and what is compared are read alike.

Identifiers are quoted by the server (``format('%I')``), never by string formatting in Python.
"""

from __future__ import annotations

SUBSCRIPTIONS = """
SELECT subname AS name, subenabled AS enabled FROM pg_subscription
WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1
"""

# A partitioned index created ON ONLY its parent is invalid until every partition's index is
# attached; pg_dump reproduces that, and every NOT VALID constraint, exactly.
INVALID_INDEXES = """
SELECT n.nspname AS schema, t.relname AS table, c.relname AS name
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid OR NOT i.indisready ORDER BY 1, 2, 3"""

# Table constraints and domain constraints (contypid) alike: both can be NOT VALID.
NOT_VALID_CONSTRAINTS = """
SELECT n.nspname AS schema, t.relname AS table, y.typname AS domain, c.conname AS name
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
LEFT JOIN pg_class t ON t.oid = c.conrelid AND c.conrelid <> 0
LEFT JOIN pg_type y ON y.oid = c.contypid AND c.contypid <> 0
WHERE NOT c.convalidated ORDER BY 1, 2, 3, 4"""


def row_count_statement(schema: str, name: str) -> str:
    """The SQL expression that builds a table's exact row count statement (``ONLY``: a partitioned
    parent's partitions are counted as tables of their own); ``schema`` and ``name`` are SQL
    expressions (columns or parameters), quoted by the server."""
    return f"format('SELECT count(*) FROM ONLY %I.%I', {schema}, {name})"
