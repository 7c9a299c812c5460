"""``make run``: pgvault on this machine with embedded defaults, nothing to configure.

- metadata in database ``pgvault`` and a demo target ``demo`` (database ``pgvault_demo``, loaded
  with the pagila sample shipped in testdata/pagila) on the local PostgreSQL;
- archives in ``.dev/archives`` (file://);
- a GnuPG key pair in ``.dev/gnupg`` and an admin token in ``.dev/token``, made on first run;
- Swagger UI at http://127.0.0.1:8000/docs.
Every ``PGVAULT_*`` variable already set wins over these defaults. Not for production.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from app.config import DATABASE_NAME_RE
from app.dsn import PgDsn

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".dev"
PG = os.environ.get("PGVAULT_DEV_PG", "postgresql://postgres@127.0.0.1:5432")
PAGILA = ROOT / "testdata" / "pagila"  # shipped with the repository (MIT)
HOST, PORT = os.environ.get("PGVAULT_DEV_HOST", "127.0.0.1"), int(
    os.environ.get("PGVAULT_DEV_PORT", "8000"))


def psql(db: str, *args: str, sql: str | None = None) -> str:
    """Run psql; ``sql`` goes on stdin, where psql interpolates (and quotes) its variables."""
    # The connection (a password too, if PGVAULT_DEV_PG has one) through libpq's environment,
    # never argv, where ps shows it.
    env = {**os.environ, **PgDsn.parse(f"{PG}/{db}").libpq_env(db)}
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", *args],
                          input=sql, check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def ensure_database(name: str) -> bool:
    """Create the database if missing; True when it was created. Names are this file's own
    constants, checked against the strict pattern before they reach SQL."""
    if not DATABASE_NAME_RE.match(name):
        raise SystemExit(f"not a plain database name: {name!r}")
    if psql("postgres", "-v", f"name={name}",
            sql="SELECT 1 FROM pg_database WHERE datname = :'name'"):
        return False
    psql("postgres", "-v", f"name={name}", sql='CREATE DATABASE :"name"')
    return True


def ensure_demo() -> None:
    if not ensure_database("pgvault_demo"):
        return
    if (PAGILA / "pagila-schema.sql").exists():
        print("loading the pagila sample into pgvault_demo ...")
        psql("pgvault_demo", "-f", str(PAGILA / "pagila-schema.sql"))
        psql("pgvault_demo", "-f", str(PAGILA / "pagila-data.sql"))
    else:
        psql("pgvault_demo", sql="CREATE TABLE items AS SELECT g AS id, md5(g::text) AS note "
                                 "FROM generate_series(1, 10000) g")


def ensure_key(home: Path) -> str:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    uid = "pgvault dev <dev@pgvault.invalid>"
    listing = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                              "--list-keys", uid], capture_output=True, text=True)
    if listing.returncode != 0:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                        "--quick-gen-key", uid, "future-default", "default", "never"],
                       check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                                  "--list-keys", uid], check=True, capture_output=True, text=True)
    return next(line.split(":")[9] for line in listing.stdout.splitlines()
                if line.startswith("fpr:"))


def ensure_token() -> str:
    path = DEV / "token"
    if not path.exists():  # created readable by its owner only, never for a moment by others
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def main() -> None:
    DEV.mkdir(exist_ok=True)
    ensure_database("pgvault")
    ensure_demo()
    fingerprint = ensure_key(DEV / "gnupg")
    token = ensure_token()
    (DEV / "archives").mkdir(exist_ok=True)
    defaults = {
        "PGVAULT_DATABASE_URL": f"{PG}/pgvault",
        "PGVAULT_STORAGE_URL": f"file://{DEV / 'archives'}",
        "PGVAULT_GPG_HOME": str(DEV / "gnupg"),
        "PGVAULT_GPG_RECIPIENTS": json.dumps([fingerprint]),
        "PGVAULT_TARGETS": json.dumps({"demo": {"dsn": f"{PG}/pgvault_demo",
                                                "retention_min_backups": 3}}),
        "PGVAULT_API_TOKENS": json.dumps([{"name": "dev", "role": "admin",
                                           "sha256": hashlib.sha256(token.encode()).hexdigest()}]),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT).returncode:
        raise SystemExit(2)  # alembic has said why, in one line
    print(f"""
pgvault (development defaults)
  Swagger UI : http://{HOST}:{PORT}/docs   (Authorize with the token below)
  dev token  : {token}
  target     : demo -> {PG}/pgvault_demo
  archives   : {DEV / 'archives'}
  try        : curl -s -X POST -H 'Authorization: Bearer {token}' http://{HOST}:{PORT}/v1/targets/demo/backups
""", flush=True)
    # pgvault logs each request itself, without its query string (app/logging.py).
    os.execv(sys.executable, [sys.executable, "-m", "uvicorn", "app.main:app", "--host", HOST,  # noqa: S606
                              "--port", str(PORT), "--timeout-graceful-shutdown", "30",
                              "--no-access-log"])


def run() -> None:
    """``main`` with its environment's problems as one line and exit code 2 (SPEC 2.13)."""
    try:
        main()
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or b"").decode(errors="replace") if isinstance(
            exc.stderr, bytes) else (exc.stderr or "")
        first = said.strip().splitlines()[:1] or [f"exit code {exc.returncode}"]
        print(f"pgvault: {exc.cmd[0]} failed: {first[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    except FileNotFoundError as exc:
        print(f"pgvault: program not found: {exc.filename}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run()
