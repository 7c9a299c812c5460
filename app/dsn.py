"""A PostgreSQL DSN, parsed once: its parts as libpq reads them, its redacted form, and the
environment (never argv) through which pg_dump and friends receive it."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

# libpq connection parameters a target DSN may carry in its query string, and the environment
# variable that hands each one to pg_dump and friends (never their argv).
LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "options": "PGOPTIONS",
}


class PgDsn(BaseModel):
    """A parsed ``postgresql://`` DSN; the password stays secret."""

    host: str
    port: int
    user: str
    password: SecretStr | None
    database: str
    params: dict[str, str]

    @classmethod
    def parse(cls, dsn: str) -> PgDsn:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        try:
            port = parts.port or 5432
        except ValueError:
            raise ValueError("has an invalid port") from None
        # Percent-escapes decoded, as libpq decodes them: "my%20db" names the database "my db".
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise ValueError("names no database (postgresql://user@host:port/dbname)")
        if len(database.encode()) > 63:
            raise ValueError("names a database longer than 63 bytes")
        # A name starting with '-' becomes an option and one with '=' a connection string
        # (SPEC 2.12): refuse both rather than hope every tool treats them as names.
        if database.startswith("-") or "=" in database or "/" in database:
            raise ValueError("names a database with '-' first, '=' or '/' in it")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(params) - set(LIBPQ_ENV))
        if unknown:
            raise ValueError(f"has unsupported parameters: {', '.join(unknown)}")
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            user=unquote(parts.username) if parts.username else "postgres",
            password=SecretStr(unquote(parts.password)) if parts.password else None,
            database=database,
            params=params,
        )

    def redacted(self) -> str:
        auth = self.user + (":***" if self.password else "")
        query = "&".join(f"{k}={v}" for k, v in self.params.items())
        database = quote(self.database, safe="")  # back to a URL: "my db" is my%20db
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def libpq_env(self, database: str | None = None) -> dict[str, str]:
        """Connection parameters for pg_dump, pg_restore, psql: all through the environment."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": database or self.database,
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password.get_secret_value()
        for key, value in self.params.items():
            env[LIBPQ_ENV[key]] = value
        return env

    def asyncpg_kwargs(self, database: str | None = None) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "database": database or self.database,
        }
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if "sslmode" in self.params:
            kwargs["ssl"] = self.params["sslmode"]
        return kwargs
