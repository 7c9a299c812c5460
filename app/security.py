"""Bearer tokens, roles and redaction.

Tokens are configured only as SHA-256 hashes. A presented token is hashed and compared with every
configured hash in constant time (``hmac.compare_digest``), all of them, so the time taken does not
reveal which one matched or how many there are.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from app.config import ApiToken, Role
from app.errors import Forbidden, Unauthorized

ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def can(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(token: str | None, tokens: list[ApiToken]) -> Principal:
    if not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    presented = token_hash(token).encode()
    found: ApiToken | None = None
    for candidate in tokens:
        if hmac.compare_digest(presented, candidate.sha256.lower().encode()):
            found = candidate
    if found is None:
        raise Unauthorized("invalid bearer token")
    return Principal(found.name, found.role)


def authorize(principal: Principal, role: Role) -> Principal:
    if not principal.can(role):
        raise Forbidden(f"this call needs the {role} role; token {principal.name!r} "
                        f"has {principal.role}")
    return principal


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every known secret value replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
