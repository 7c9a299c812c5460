"""A pgvault served by a real ``uvicorn app.main:app`` process, as an operator starts it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, TOKENS, dsn


def served_env(metadata_db: str, pagila_db: str, gpg_key: tuple[Path, str],
               tmp_path: Path, **changes: str) -> dict[str, str]:
    """The environment of a served pgvault that runs no job (other tests' jobs share its
    metadata database)."""
    home, fpr = gpg_key
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGVAULT_")}
    env.update({
        "PGVAULT_DATABASE_URL": dsn(metadata_db),
        "PGVAULT_STORAGE_URL": f"file://{tmp_path / 'archives'}",
        "PGVAULT_GPG_HOME": str(home),
        "PGVAULT_GPG_RECIPIENTS": json.dumps([fpr]),
        "PGVAULT_TARGETS": json.dumps({"pagila": {"dsn": dsn(pagila_db)}}),
        "PGVAULT_API_TOKENS": json.dumps([
            {"name": f"test-{role}", "role": role,
             "sha256": hashlib.sha256(tok.encode()).hexdigest()}
            for role, tok in TOKENS.items()]),
        "PGVAULT_WORKER_CONCURRENCY": "0",
        "PGVAULT_SCHEDULER_ENABLED": "false",
    })
    env.update(changes)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn(env: dict[str, str], *args: str) -> Iterator[tuple[str, list[str]]]:
    """``uvicorn app.main:app`` as an operator starts it; yields its URL and, once it has
    stopped, its whole output (stdout and stderr) in the list."""
    port = free_port()
    output: list[str] = []
    # Into a file, not a pipe: an undrained pipe that fills up blocks the server's event loop.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                             "127.0.0.1", "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, _read(log)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
        yield url, output
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        output.append(_read(log))
        log.close()


def _read(log: Any) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace"))
