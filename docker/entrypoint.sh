#!/bin/sh
# The container's start: the metadata schema first (alembic is idempotent: nothing to do when it is
# current), then the server in this process's place (exec), so SIGTERM from `docker stop` reaches
# uvicorn, which stops gracefully: running jobs get PGVAULT_SHUTDOWN_GRACE_S to finish before they
# are cancelled. A failed migration stops here with alembic's exit code, and nothing is served.
set -eu
alembic upgrade head
exec uvicorn app.main:app --host 0.0.0.0 --port 8000 --timeout-graceful-shutdown 30 \
    --no-access-log "$@"
