"""The SQL an in-place restore runs on its target before it replaces anything: what to drop
(named by the manifest, quoted by the server's ``format('%I')``), what outside the archive depends
on it, and what to lock. No name is ever formatted into SQL in Python."""

from __future__ import annotations

PRELUDE_SQL = """
SELECT coalesce(string_agg(format('DROP SCHEMA IF EXISTS %I CASCADE;', s), E'\\n'), '')
FROM unnest($1::text[]) AS s"""

# The archive's schema-less objects (app/backup/facts.py), each dropped if present, by a statement
# the target's server quotes; in the manifest's order (dependents first).
SCHEMALESS_DROP_SQL = """
SELECT coalesce(string_agg(CASE o->>'type'
    WHEN 'event trigger' THEN format('DROP EVENT TRIGGER IF EXISTS %I;', n[1])
    WHEN 'publication' THEN format('DROP PUBLICATION IF EXISTS %I;', n[1])
    WHEN 'user mapping' THEN format('DROP USER MAPPING IF EXISTS FOR %s SERVER %I;',
                                    coalesce(quote_ident(n[1]), 'PUBLIC'), n[2])
    WHEN 'server' THEN format('DROP SERVER IF EXISTS %I;', n[1])
    WHEN 'foreign-data wrapper' THEN format('DROP FOREIGN DATA WRAPPER IF EXISTS %I;', n[1])
    WHEN 'cast' THEN format('DROP CAST IF EXISTS (%I.%I AS %I.%I);', n[1], n[2], n[3], n[4])
    WHEN 'transform' THEN format('DROP TRANSFORM IF EXISTS FOR %I.%I LANGUAGE %I;',
                                 n[1], n[2], n[3])
    WHEN 'access method' THEN format('DROP ACCESS METHOD IF EXISTS %I;', n[1])
    END, E'\\n' ORDER BY e.ord), '')
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(o, ord)
CROSS JOIN LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(o->'names')) AS n) AS names"""
SCHEMALESS_TYPES = frozenset({"event trigger", "publication", "user mapping", "server",
                              "foreign-data wrapper", "cast", "transform", "access method"})

# The archive's subscriptions where the target has them: pg_dump writes them (only when it runs as
# a superuser) with a plain CREATE, connect = false and their slot's name. A subscription with a
# slot cannot be dropped in a transaction; without one it can, and the publisher's slot stays for
# the restored subscription to use once enabled.
SUBSCRIPTIONS_DROP_SQL = """
SELECT coalesce(string_agg(format('ALTER SUBSCRIPTION %1$I DISABLE; '
                                  'ALTER SUBSCRIPTION %1$I SET (slot_name = NONE); '
                                  'DROP SUBSCRIPTION %1$I;', s.subname), E'\\n'
                           ORDER BY s.subname), '')
FROM pg_subscription s
WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND s.subname = ANY($1::text[])"""

# Everything outside the archive's schemas that CASCADE would silently take with them: views,
# foreign keys, columns of their types or domains, defaults using their sequences, triggers and
# policies calling their functions... pg_depend knows them all. A rule, trigger, default or policy
# belongs to its table's schema; extension members and schema-less objects (casts, publication
# memberships) are recreated by the dump itself.
DEPENDENTS_SQL = """
WITH archive AS (SELECT oid FROM pg_namespace WHERE nspname = ANY($1::text[])),
dependents AS (
    SELECT DISTINCT d.classid, d.objid, d.objsubid
    FROM pg_depend d
    WHERE d.deptype IN ('n', 'a')
      AND ((d.refclassid = 'pg_namespace'::regclass AND d.refobjid IN (SELECT oid FROM archive))
           OR (pg_identify_object(d.refclassid, d.refobjid, 0)).schema = ANY($1::text[]))
      AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid
                      AND e.objid = d.objid AND e.deptype = 'e')
)
SELECT o.type || ' ' || o.identity AS name
FROM dependents d
CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) AS o
CROSS JOIN LATERAL (SELECT CASE d.classid
    WHEN 'pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_rewrite r
                                      JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
    WHEN 'pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_trigger t
                                      JOIN pg_class c ON c.oid = t.tgrelid WHERE t.oid = d.objid)
    WHEN 'pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_attrdef a
                                      JOIN pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
    WHEN 'pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_policy p
                                     JOIN pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
    ELSE (SELECT n.oid FROM pg_namespace n WHERE n.nspname = o.schema)
    END AS nsp) AS owner
WHERE owner.nsp IS NOT NULL AND owner.nsp NOT IN (SELECT oid FROM archive)
ORDER BY 1"""

# Members of the archive's publications (which the restore drops and makes again from the dump)
# that lie outside its schemas: the dump, their schema excluded, does not hold them, so they would
# silently leave the publication and stop being replicated.
PUBLICATION_MEMBERS_SQL = """
SELECT format('publication %I holds table %I.%I', p.pubname, n.nspname, c.relname) AS name
FROM pg_publication p
JOIN pg_publication_rel r ON r.prpubid = p.oid
JOIN pg_class c ON c.oid = r.prrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.pubname = ANY($2::text[]) AND NOT n.nspname = ANY($1::text[])
ORDER BY 1"""
PUBLICATION_SCHEMAS_SQL = """
SELECT format('publication %I holds the tables in schema %I', p.pubname, n.nspname) AS name
FROM pg_publication p
JOIN pg_publication_namespace s ON s.pnpubid = p.oid
JOIN pg_namespace n ON n.oid = s.pnnspid
WHERE p.pubname = ANY($2::text[]) AND NOT n.nspname = ANY($1::text[])
ORDER BY 1"""


# The archive's tables, locked first in the restore's transaction: an outside object made to
# depend on one of them while the restore waited for its locks is then seen by the check that
# follows them (views, foreign keys, columns of a table's row type: all lock the table). Only the
# tables this role may lock: a schema's owner can drop (CASCADE) tables it has no privilege on.
LOCK_SQL = """
SELECT coalesce('LOCK TABLE ' || string_agg(format('%I.%I', n.nspname, c.relname), ', '
                                            ORDER BY n.nspname, c.relname)
                || ' IN ACCESS EXCLUSIVE MODE;', '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p')
  AND has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE')"""
