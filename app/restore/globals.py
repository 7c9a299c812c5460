"""Restoring globals (roles, memberships, tablespaces) from ``pg_dumpall --globals-only`` output.

Roles that already exist on the destination server are left exactly as they are: their
``CREATE ROLE`` and ``ALTER ROLE`` statements are dropped before the script runs. Roles created here
have no password (the dump was taken with ``--no-role-passwords``): the ones that can log in are
reported for a password reset.

No role name is ever taken out of the script: a name can hold spaces, quotes, semicolons and
newlines. The script is cut into whole statements (outside quoted identifiers and literals, as psql
reads it), and each statement is compared, exactly, with the ones pg_dumpall writes for a role
(``CREATE ROLE <name>;``, ``ALTER ROLE <name> ...``, ``COMMENT ON ROLE <name> IS ...``) with the
name as the server quotes it (``quote_ident``, the rule pg_dumpall's own quoting follows). A
membership granted to an existing role (``GRANT <role> TO <name> ...;``) is dropped too: one
revoked since the backup must not come back with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GlobalsPlan:
    sql: str
    skipped: list[str] = field(default_factory=list)


def statements(script: str) -> list[str]:
    """The script in pieces whose concatenation is the script: each ends after a statement's
    ``;`` or a psql meta-command's line. Quoted identifiers, string literals (``E''`` ones with
    their backslash escapes) and ``--`` comments are read through, so a ``;`` or a newline inside
    a name never ends a piece."""
    pieces: list[str] = []
    start = i = 0
    begun = False  # a statement's first character seen in this piece
    n = len(script)
    while i < n:
        ch = script[i]
        if not (begun or ch.isspace() or script.startswith("--", i)):
            begun = True
            if ch == "\\":  # a meta-command (\restrict ...): its line
                end = script.find("\n", i)
                i = n if end < 0 else end + 1
                pieces.append(script[start:i])
                start, begun = i, False
                continue
        if ch == '"' or ch == "'":
            escapes = ch == "'" and i > 0 and script[i - 1] in "eE" and (
                i < 2 or not (script[i - 2].isalnum() or script[i - 2] in "_$"))
            i += 1
            while i < n:
                if escapes and script[i] == "\\":
                    i += 2
                    continue
                if script[i] == ch:
                    if i + 1 < n and script[i + 1] == ch:  # a doubled quote stays inside
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end + 1
        elif ch == ";":
            i += 1
            pieces.append(script[start:i])
            start, begun = i, False
        else:
            i += 1
    if start < n:
        pieces.append(script[start:])
    return pieces


def statement_text(piece: str) -> str:
    """A piece without the blank lines and ``--`` comment lines before its statement."""
    lines = piece.splitlines(keepends=True)
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "".join(lines).strip()


def role_of_statement(text: str, statements_of: dict[str, str]) -> str | None:
    """The role whose ``CREATE ROLE`` or ``ALTER ROLE`` statement ``text`` is, if it is one of
    ``statements_of`` (``CREATE ROLE <quoted>;`` and ``ALTER ROLE <quoted> `` -> name): the
    text up to each of its spaces is looked up, since a quoted name may hold spaces too."""
    if text in statements_of:
        return statements_of[text]
    for head in ("ALTER ROLE ", "COMMENT ON ROLE "):
        if not text.startswith(head):
            continue
        at = text.find(" ", len(head))
        while at >= 0:
            if (name := statements_of.get(text[:at + 1])) is not None:
                return name
            at = text.find(" ", at + 1)
    return None


def _identifier_end(text: str, at: int) -> int:
    """Where the identifier starting at ``at`` ends: a quoted one at its closing quote (``""``
    stays inside), a bare one (as quote_ident leaves it) at a space or ``;``."""
    if text.startswith('"', at):
        i = at + 1
        while (i := text.find('"', i)) >= 0:
            if not text.startswith('""', i):
                return i + 1
            i += 2
        return len(text)
    ends = [i for i in (text.find(" ", at), text.find(";", at)) if i >= 0]
    return min(ends, default=len(text))


def member_of_grant(text: str, members: dict[str, str]) -> str | None:
    """The role of ``members`` (quoted -> name) that the membership ``text`` (``GRANT <role> TO
    <member>[ WITH ...][ GRANTED BY ...];``) is granted to, if it is one of them."""
    if not text.startswith("GRANT "):
        return None
    end = _identifier_end(text, len("GRANT "))
    if not text.startswith(" TO ", end):
        return None
    member_end = _identifier_end(text, end + len(" TO "))
    rest = text[member_end:]
    if rest != ";" and not rest.startswith((" WITH ", " GRANTED BY ")):
        return None
    return members.get(text[end + len(" TO "):member_end])


def plan(script: str, existing: dict[str, str]) -> GlobalsPlan:
    """The script less the statements of roles in ``existing`` (name -> name as the
    destination server quotes it), and which of those it held."""
    statements_of = {f"CREATE ROLE {quoted};": name for name, quoted in existing.items()}
    statements_of |= {f"ALTER ROLE {quoted} ": name for name, quoted in existing.items()}
    statements_of |= {f"COMMENT ON ROLE {quoted} ": name for name, quoted in existing.items()}
    members = {quoted: name for name, quoted in existing.items()}
    result = GlobalsPlan(sql="")
    kept: list[str] = []
    for piece in statements(script):
        text = statement_text(piece)
        role = role_of_statement(text, statements_of) or member_of_grant(text, members)
        if role is None:
            kept.append(piece)
        elif role not in result.skipped:
            result.skipped.append(role)
    result.sql = "".join(kept) + "\n"
    return result


def created_roles(sql: str, after: list[tuple[str, str, bool]],
                  existing: dict[str, str]) -> tuple[list[str], list[str]]:
    """The roles the script ``sql`` created, in its order, and those of them that can log in:
    ``after`` is the server's ``(name, quote_ident(name), can_login)`` of every role once it
    ran."""
    creates = {statement_text(piece): at for at, piece in enumerate(statements(sql))}
    made = sorted(((creates[f"CREATE ROLE {quoted};"], name, login)
                   for name, quoted, login in after
                   if name not in existing and f"CREATE ROLE {quoted};" in creates))
    return [name for _, name, _ in made], [name for _, name, login in made if login]
