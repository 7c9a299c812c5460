"""Restoring globals (roles, memberships, tablespaces) from ``pg_dumpall --globals-only`` output.

Roles that already exist on the destination server are left exactly as they are: their
``CREATE ROLE`` and ``ALTER ROLE`` lines are dropped before the script runs. Roles created here have
no password (the dump was taken with ``--no-role-passwords``): the ones that can log in are reported
for a password reset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ROLE_LINE = re.compile(r'^(CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[^\s;]+)(.*)$')


@dataclass
class GlobalsPlan:
    sql: str
    created: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    login_roles: list[str] = field(default_factory=list)


def _unquote(name: str) -> str:
    if name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('""', '"')
    return name


def plan(script: str, existing: set[str]) -> GlobalsPlan:
    result = GlobalsPlan(sql="")
    kept: list[str] = []
    for line in script.splitlines():
        match = _ROLE_LINE.match(line)
        if match:
            verb, raw, rest = match.groups()
            role = _unquote(raw)
            if role in existing:
                if role not in result.skipped:
                    result.skipped.append(role)
                continue
            if verb == "CREATE" and role not in result.created:
                result.created.append(role)
            if verb == "ALTER" and re.search(r"\bLOGIN\b", rest) and not re.search(
                    r"\bNOLOGIN\b", rest) and role not in result.login_roles:
                result.login_roles.append(role)
        kept.append(line)
    result.sql = "\n".join(kept) + "\n"
    return result
