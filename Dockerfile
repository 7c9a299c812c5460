# pgvault: the API and its job runner in one image. Build: docker build -t pgvault .
# Run: docker run --env-file .env -p 8000:8000 -v /var/lib/pgvault/gnupg:/var/lib/pgvault/gnupg pgvault
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
# PostgreSQL client tools from PGDG so pg_dump can be at least the servers' major version
# (pg_dump refuses older servers' dumps otherwise; pgvault checks this before every backup).
ARG PG_MAJOR=17
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg zstd; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get purge -y curl; apt-get autoremove -y; rm -rf /var/lib/apt/lists/*
COPY --from=build /install /usr/local
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
RUN useradd --system --uid 10001 --home-dir /var/lib/pgvault --create-home pgvault
USER pgvault
ENV PYTHONUNBUFFERED=1 PGVAULT_GPG_HOME=/var/lib/pgvault/gnupg
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
# Migrations first (idempotent; the metadata database must exist), then the server; uvicorn turns
# SIGTERM into a graceful stop in which running jobs get PGVAULT_SHUTDOWN_GRACE_S to finish before
# they are cancelled. pgvault logs requests itself, without query strings: no uvicorn access log.
# The keyring mounted at PGVAULT_GPG_HOME must belong to uid 10001 (chown -R 10001, chmod 700).
CMD ["sh", "-c", "alembic upgrade head && exec uvicorn app.main:app --host 0.0.0.0 --port 8000 --timeout-graceful-shutdown 30 --no-access-log"]
