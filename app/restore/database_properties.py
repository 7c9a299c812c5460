"""Bringing back a database's own properties: its grants, its settings, its roles' settings in it
and its comment (recorded at backup time, see ``app.backup.facts.database_properties``).

pg_dump writes these only with ``--create`` and ``pg_dumpall --globals-only`` no longer does, so a
restore of the dump alone loses them. Every statement is built by the destination server
(``format('%I')``, ``quote_literal``) against the restored database's name, and run on its own:
a role missing on the destination, or one statement the connecting role may not run, is skipped
and reported, never fatal. The checklist names settings, never their values (they may be secrets).

Grants are made equal, not added: what the destination database has and the source did not is
revoked (except CONNECT of pgvault's own role: it must not lock itself out). The source owner's
own privileges go to the destination's owner, as ownership does.
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Settings whose value is a list of quoted elements (pg_dump's variable_is_guc_list_quote): set
# element by element, or the whole list would become one element.
LIST_QUOTE = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                        "shared_preload_libraries", "temp_tablespaces",
                        "unix_socket_directories"})

DESTINATION = """
SELECT pg_get_userbyid(d.datdba) AS owner, shobj_description(d.oid, 'pg_database') AS comment,
       d.oid AS oid
FROM pg_database d WHERE d.datname = $1"""

ACL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.privilege_type AS privilege, a.is_grantable AS grantable
FROM pg_database d CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
WHERE d.datname = $1"""

DEFAULT_ACL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.privilege_type AS privilege, a.is_grantable AS grantable
FROM pg_database d CROSS JOIN LATERAL aclexplode(acldefault('d', d.datdba)) a
WHERE d.datname = $1"""

ROLES_WITH_SETTINGS = """
SELECT pg_get_userbyid(setrole) AS role FROM pg_db_role_setting
WHERE setdatabase = $1 AND setrole <> 0 ORDER BY 1"""

GRANT = """
SELECT format('%s %s ON DATABASE %I %s %s', $1::text, $2::text, $3::text,
              CASE $1 WHEN 'GRANT' THEN 'TO' ELSE 'FROM' END,
              coalesce(quote_ident($4::text), 'PUBLIC'))
       || CASE WHEN $5 THEN ' WITH GRANT OPTION' ELSE '' END"""

SET = """
SELECT CASE WHEN $2::text IS NULL THEN format('ALTER DATABASE %I', $1::text)
            ELSE format('ALTER ROLE %I IN DATABASE %I', $2::text, $1::text) END
       || format(' SET %I TO ', $3::text)
       || (SELECT string_agg(quote_literal(v), ', ' ORDER BY i)
           FROM unnest($4::text[]) WITH ORDINALITY AS u(v, i))"""

RESET = """
SELECT CASE WHEN $2::text IS NULL THEN format('ALTER DATABASE %I RESET ALL', $1::text)
            ELSE format('ALTER ROLE %I IN DATABASE %I RESET ALL', $2::text, $1::text) END"""

COMMENT = "SELECT format('COMMENT ON DATABASE %I IS ', $1::text) || coalesce(quote_literal($2), "\
          "'NULL')"

Grant = tuple[str | None, str, bool]  # grantee (None: PUBLIC), privilege, grantable
# The privileges a database has: the only words written into a statement unquoted.
PRIVILEGES = frozenset({"CONNECT", "CREATE", "TEMPORARY"})


def split_list(value: str) -> list[str]:
    """A list setting's stored value (``"$user", public``) as its elements, as PostgreSQL's
    SplitGUCList reads it: comma-separated, double quotes around an element, ``""`` inside."""
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            return items
        if value[i] == '"':
            j, item = i + 1, ""
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        item, j = item + '"', j + 2
                        continue
                    break
                item, j = item + value[j], j + 1
            i = j + 1
        else:
            j = i
            while j < n and value[j] != "," and not value[j].isspace():
                j += 1
            item, i = value[i:j], j
        items.append(item)
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] != ",":
            return [value]  # not a list after all: set it as PostgreSQL stored it
        i += 1


def _who(role: str | None) -> str:
    return "PUBLIC" if role is None else role


async def apply(conn: Any, database: str, props: dict[str, Any], *,
                replace: bool) -> dict[str, Any]:
    """Give ``database`` the recorded properties. ``replace`` (in place): first reset the
    settings and comment it has, so it ends as the source was."""
    roles = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
    dest = await conn.fetchrow(DESTINATION, database)
    applied: list[str] = []
    skipped: list[dict[str, str]] = []

    async def run(what: str, sql: str) -> None:
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            skipped.append({"what": what, "reason": f"{type(exc).__name__} "
                                                    f"(SQLSTATE {exc.sqlstate})"})
        else:
            applied.append(what)

    # Grants: revoke what the source lacks, grant what the destination lacks.
    if props.get("acl") is None:
        wanted: set[Grant] = {(r["grantee"], r["privilege"], r["grantable"])
                              for r in await conn.fetch(DEFAULT_ACL, database)}
    else:
        wanted = set()
        for g in props["acl"]:
            if g["privilege"] not in PRIVILEGES:
                skipped.append({"what": f"GRANT {g['privilege']!r} ON DATABASE",
                                "reason": "not a database privilege"})
                continue
            grantee = dest["owner"] if g["grantee"] == props.get("owner") else g["grantee"]
            if grantee is not None and grantee not in roles:
                skipped.append({"what": f"GRANT {g['privilege']} ON DATABASE TO {grantee}",
                                "reason": "role does not exist on the destination"})
                continue
            wanted.add((grantee, g["privilege"], bool(g["grantable"])))
    have: set[Grant] = {(r["grantee"], r["privilege"], r["grantable"])
                        for r in await conn.fetch(ACL, database)}
    myself = await conn.fetchval("SELECT current_user")
    for grantee, privilege, grantable in sorted(have - wanted, key=str):
        if grantee == myself and privilege == "CONNECT":
            # Never lock pgvault out of the database it protects.
            skipped.append({"what": f"REVOKE CONNECT ON DATABASE FROM {grantee}",
                            "reason": "pgvault's own role keeps its access"})
            continue
        if (grantee, privilege, not grantable) in wanted and grantable:
            verb = "REVOKE GRANT OPTION FOR"
        elif (grantee, privilege, not grantable) in wanted:
            continue  # the grant below adds the grant option
        else:
            verb = "REVOKE"
        sql = await conn.fetchval(GRANT, verb, privilege, database, grantee, False)
        await run(f"{verb} {privilege} ON DATABASE FROM {_who(grantee)}", sql)
    for grantee, privilege, grantable in sorted(wanted - have, key=str):
        sql = await conn.fetchval(GRANT, "GRANT", privilege, database, grantee, grantable)
        await run(f"GRANT {privilege} ON DATABASE TO {_who(grantee)}"
                  + (" WITH GRANT OPTION" if grantable else ""), sql)

    # Settings: of the database, then of roles in it.
    if replace:
        for role in [None, *[r["role"] for r in await conn.fetch(ROLES_WITH_SETTINGS,
                                                                 dest["oid"])]]:
            await run(_setting_label(role, "ALL", "RESET"),
                      await conn.fetchval(RESET, database, role))
    for setting in props.get("settings") or []:
        role, name = setting["role"], setting["name"]
        if role is not None and role not in roles:
            skipped.append({"what": _setting_label(role, name),
                            "reason": "role does not exist on the destination"})
            continue
        values = split_list(setting["value"]) if name.lower() in LIST_QUOTE else [
            setting["value"]]
        sql = await conn.fetchval(SET, database, role, name, values or [""])
        await run(_setting_label(role, name), sql)

    if props.get("comment") is not None or (replace and dest["comment"] is not None):
        await run("COMMENT ON DATABASE",
                  await conn.fetchval(COMMENT, database, props.get("comment")))
    return {"status": "applied" if not skipped else "partly applied",
            "applied": applied, "skipped": skipped}


def _setting_label(role: str | None, name: str, verb: str = "SET") -> str:
    where = "ALTER DATABASE" if role is None else f"ALTER ROLE {role} IN DATABASE"
    return f"{where} {verb} {name}"
