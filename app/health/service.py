"""Readiness checks, and the Prometheus figures (app.health.metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from app.health import metrics
from app.integrations import gpg
from app.logging import scrub
from app.resources import Resources

CHECK_TIMEOUT_S = 5.0


async def readiness(services: Resources) -> dict[str, Any]:
    """Each dependency's check, run at once and each bounded: a hung endpoint is a failed check,
    never a hung or failed /readyz."""
    names = ("metadata_db", "storage", "gpg")
    results = await asyncio.gather(
        *(_bounded(check(services)) for check in (_metadata_db, _storage, _gpg)))
    return dict(zip(names, results, strict=True))


async def _bounded(check: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "detail": f"no answer within {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:  # a check that fails in an unforeseen way is still just a failure
        # /readyz answers anyone: the text is scrubbed of secrets as log lines are.
        return {"ok": False, "detail": f"{type(exc).__name__}: {scrub(str(exc))[:300]}"}


async def _metadata_db(services: Resources) -> dict[str, Any]:
    try:
        async with services.pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # the DSN may be in the message: name the failure only
        return {"ok": False, "detail": f"unreachable: {type(exc).__name__}"}
    return {"ok": True}


async def _storage(services: Resources) -> dict[str, Any]:
    await services.storage.check()
    return {"ok": True}


async def _gpg(services: Resources) -> dict[str, Any]:
    try:
        keys = await gpg.check_recipients(services.settings.gpg_home,
                                          services.settings.gpg_recipients)
    except gpg.KeyringError as exc:
        return {"ok": False, "detail": str(exc)}
    # Backups need only the public keys; restores and verifications need a private one.
    return {"ok": True, "recipients": len(keys),
            "private_key": await gpg.has_secret_key(services.settings.gpg_home)}


def unready_detail(checks: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {c.get('detail', 'failed')}" for name, c in checks.items()
                     if not c["ok"])


async def metrics_text(services: Resources) -> bytes:
    return await metrics.metrics_text(services)
