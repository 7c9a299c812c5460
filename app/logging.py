"""Structured JSON logs with stable event names; the job id is bound by the runner.

structlog renders each event to one JSON line and hands it to the standard library's logging,
whose handlers never raise on a failed write: logging cannot break a request or a job.

No secret may reach a log (SPEC 2.9):
- requests are logged here (:class:`RequestLog`), by path without the query string, where a
  client may have put a token; uvicorn's own access log, which prints the whole request line, is
  switched off even when ``uvicorn app.main:app`` runs without ``--no-access-log``;
- every handler, uvicorn's included, passes its records through :class:`_Redact`, which replaces
  the configured secrets (DSN passwords, webhook URLs, the gpg passphrase) and anything shaped like
  a credential (a bearer token, ``password=``/``token=`` parameters, a URL's password) with
  ``***``, in the message and in a traceback's text alike.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_configured = False
_secrets: set[str] = set()

_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"), r"\1***"),
    (re.compile(r"(?i)((?:access_token|token|api_key|apikey|password|passwd|secret|passphrase"
                r"|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)"
                r"[^&\s'\",;]+"), r"\1***"),
    (re.compile(r"(://[^:/@\s'\"]*:)[^@\s'\"/]+@"), r"\1***@"),
]
ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

log = structlog.get_logger("pgvault.http")


def scrub(text: str) -> str:
    """``text`` without the known secrets and without credential-shaped values."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._scrub(record)
        except Exception as exc:  # malformed (args that do not fit): neither raise nor leak
            record.msg, record.args = f"unrenderable log record ({type(exc).__name__})", ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    @staticmethod
    def _scrub(record: logging.LogRecord) -> None:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (it can be replaced after start-up)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def configure(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Set logging up once; ``secrets`` are added to what every log line is scrubbed of."""
    global _configured
    # The standard AWS and libpq variables are read by botocore and libpq, not by Settings.
    from_env = [os.environ.get(k, "") for k in ENV_SECRETS]
    _secrets.update(s for s in [*secrets, *from_env] if len(s) >= 3)
    _guard_uvicorn()
    if _configured:
        return
    _configured = True
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    _guard_uvicorn()


def _guard_uvicorn() -> None:
    """uvicorn configures its loggers before it loads the app, so this runs after it: its access
    log goes (RequestLog replaces it) and every handler gets the redacting filter."""
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _Redact) for f in handler.filters):
                handler.addFilter(_Redact())


class RequestLog:
    """One ``request`` event per HTTP request: method, path (never the query string), status,
    duration and request id. The id is the caller's ``X-Request-ID`` when it is a plain token,
    else a new one; it is bound to every log line of the request and sent back in the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        status = 500  # what the client gets if the app raises before answering
        began = time.perf_counter()

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers,
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_logged)
            finally:
                # Probes answered well are DEBUG: a load balancer polling them would drown the rest.
                emit = log.debug if scope["path"] in PROBES and status < 400 else log.info
                emit("request", method=scope["method"], path=scope["path"], status=status,
                     duration_ms=round((time.perf_counter() - began) * 1000, 1),
                     client=(scope.get("client") or ("-",))[0])
