# pgvault: the API and its job runner in one image.
#   Build: docker build -t pgvault .
#   Run:   see README.md, "Running the container" (keyring ownership, work directory volume).
#
# This image carries the PostgreSQL client programs (pg_dump, pg_dumpall, pg_restore, psql) of
# every supported server major: 13, 14, 15, 16 and 17, side by side in
# /usr/lib/postgresql/<major>/bin.
# pgvault picks, per target and per operation, the ones that fit that server (SPEC 2.13): pg_dump
# at least the server's major, pg_restore and psql of the destination's major.

# ---- build: dependencies first (a layer that changes only with requirements.lock), then the app
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# requirements.lock pins every dependency with its hashes (`make lock`, from pyproject.toml).
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --prefix=/install -r requirements.lock
COPY pyproject.toml ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps --prefix=/install .

# ---- run
FROM python:3.11-slim-bookworm
ARG PG_MAJORS="13 14 15 16 17"
LABEL org.opencontainers.image.title="pgvault" \
      org.opencontainers.image.description="PostgreSQL backups to S3: encrypted, verified, restorable. PostgreSQL client programs 13, 14, 15, 16 and 17 included." \
      dev.pgvault.postgresql-clients="13 14 15 16 17"
# The PGDG apt repository (apt.postgresql.org) carries every major's client package for bookworm;
# Debian's own has only 15.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg zstd; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    packages=""; for major in ${PG_MAJORS}; do packages="${packages} postgresql-client-${major}"; done; \
    apt-get install -y --no-install-recommends ${packages}; \
    for major in ${PG_MAJORS}; do /usr/lib/postgresql/${major}/bin/pg_dump --version; done; \
    apt-get purge -y curl; apt-get autoremove -y; rm -rf /var/lib/apt/lists/*
COPY --from=build /install /usr/local
# The service's user. The keyring (PGVAULT_GPG_HOME) must be owned by this uid, mode 0700: gpg
# refuses, or warns about, a home directory another user owns. Mount it at /var/lib/pgvault/gnupg
# from a host directory chowned to 10001 (or run with --user set to the directory's owner).
RUN useradd --system --uid 10001 --home-dir /var/lib/pgvault --create-home pgvault; \
    install -d -o pgvault -g pgvault -m 0700 /var/lib/pgvault/gnupg /var/lib/pgvault/work
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
COPY docker/entrypoint.sh /usr/local/bin/pgvault-entrypoint
USER pgvault
# Restores download and decrypt an archive's dump into PGVAULT_WORK_DIR (as large as the dump):
# a volume, not the container's writable layer. Its scratch folders are private (0700) and a
# crash's leftovers are swept at the next start.
ENV PYTHONUNBUFFERED=1 \
    PGVAULT_GPG_HOME=/var/lib/pgvault/gnupg \
    PGVAULT_WORK_DIR=/var/lib/pgvault/work
VOLUME ["/var/lib/pgvault/work"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
# Migrations (idempotent; the metadata database must exist), then uvicorn in this process's place
# (docker/entrypoint.sh). pgvault logs requests itself, without query strings: no uvicorn access
# log. The keyring mounted at PGVAULT_GPG_HOME must belong to uid 10001 (chown -R 10001, chmod 700).
ENTRYPOINT ["pgvault-entrypoint"]
