"""Webhook notifications: job outcomes and RPO breaches, as generic JSON or a Slack body.

Deliveries run in the background, retried with exponential backoff (tenacity) on network errors,
429 and 5xx; other 4xx answers are final. A webhook URL can carry a secret (Slack's do): only its
host is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from app.config import WebhookConfig

log = structlog.get_logger("pgvault.webhooks")


class _Retryable(Exception):
    pass


def body_for(hook: WebhookConfig, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    if hook.format == "slack":
        icon = {"job.succeeded": ":white_check_mark:", "job.failed": ":x:",
                "job.cancelled": ":no_entry_sign:", "job.stalled": ":hourglass:",
                "rpo.breach": ":rotating_light:"}
        return {"text": f"{icon.get(event, '')} pgvault: {payload.get('summary', event)}".strip()}
    return {"event": event, **payload}


class Notifier:
    def __init__(self, hooks: list[WebhookConfig], *, attempts: int, backoff_s: float) -> None:
        self.hooks = hooks
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(timeout=10, follow_redirects=False)
        self._tasks: set[asyncio.Task[None]] = set()

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        for hook in self.hooks:
            if event in hook.events:
                task = asyncio.create_task(self._deliver(hook, event, body_for(hook, event,
                                                                                 payload)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, hook: WebhookConfig, event: str, body: dict[str, Any]) -> None:
        host = urlsplit(str(hook.url)).hostname
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.attempts),
                    wait=wait_exponential(multiplier=self.backoff_s, max=60),
                    retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
                    reraise=True):
                with attempt:
                    resp = await self._client.post(str(hook.url), json=body)
                    if resp.status_code == 429 or resp.status_code >= 500:
                        raise _Retryable(f"HTTP {resp.status_code}")
                    if resp.status_code >= 400:
                        log.warning("webhook_refused", host=host, webhook_event=event,
                                    status=resp.status_code)
                        return
            log.info("webhook_delivered", host=host, webhook_event=event)
        except (httpx.TransportError, _Retryable) as exc:
            log.warning("webhook_failed", host=host, webhook_event=event, attempts=self.attempts,
                        error=type(exc).__name__)

    async def close(self, timeout: float = 5) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
        await self._client.aclose()
