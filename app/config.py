"""Configuration (SPEC section 5): environment prefix ``PGVAULT_``, optional ``.env`` file.

Every setting is validated when the settings are built, so a bad value is one readable line at
start-up (see :func:`load_settings`), not a traceback in the middle of a backup.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from app.config_models import (
    AnomalyConfig,
    CopyConfig,
    ObjectLockMode,
    check_lockable,
    check_storage_url,
    same_place,
)
from app.dsn import PgDsn as PgDsn  # the DSN type, re-exported where settings use it

TARGET_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
DATABASE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
BACKUP_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$")
FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}$")

Role = Literal["viewer", "operator", "admin"]

DEFAULT_SCHEDULES: dict[str, str] = {
    "backup": "0 0 * * *",  # daily at 00:00 UTC
    "retention": "30 0 * * *",  # daily
    "verify": "0 3 1 * *",  # monthly restore test
    "maintenance": "0 2 * * 0",  # weekly ANALYZE
    # weekly reconciliation of the copies (SPEC 2.15), by size: cheap (listings). A deep one
    # (every object read back) is asked for through the API when wanted.
    "reconcile": "0 4 * * 0",
}
# With verify_every_archive, the restore tests run daily (within the target's daily budget).
CONTINUOUS_VERIFY_SCHEDULE = "0 3 * * *"

SCHEDULE_ALIASES = {"verification": "verify"}

class TargetConfig(BaseModel):
    """One protected database and its policy."""

    model_config = ConfigDict(extra="forbid")  # a misspelt policy key is an error, not a default

    dsn: SecretStr = Field(description="postgresql:// DSN of the database to protect")
    retention_days: int = Field(90, ge=1, le=36500)
    retention_min_backups: int = Field(7, ge=1, le=1000)
    schedules: dict[str, str] = Field(default_factory=dict)
    exclude_schemas: list[str] = Field(default_factory=list, description=(
        "schemas left out of backups, each matched exactly (case included, no wildcards)"))
    row_counts: bool = Field(True, description="exact row counts in the manifest")
    verify_every_archive: bool = Field(True, description=(
        "restore-test every complete archive without a conclusive verification (SPEC 2.14)"))
    verify_budget_per_day: int = Field(2, ge=0, le=1000, description=(
        "at most this many of those restore tests per day"))
    anomaly: AnomalyConfig | Literal[False] = Field(
        default_factory=AnomalyConfig,
        description="when a new archive is suspect; false turns the guard off")

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: SecretStr) -> SecretStr:
        try:
            PgDsn.parse(value.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"dsn {exc}") from None
        return value

    @field_validator("schedules", mode="before")
    @classmethod
    def _schedule_names(cls, value: Any) -> Any:
        """SPEC 2.6 calls the monthly restore test "verification"; a null or "" turns a
        schedule off."""
        if not isinstance(value, dict):
            return value
        named = {SCHEDULE_ALIASES.get(k, k): v for k, v in value.items()}
        if len(named) < len(value):
            raise ValueError("verify and verification name the same schedule: give one")
        return {k: "" if v is None else v for k, v in named.items()}

    @field_validator("schedules")
    @classmethod
    def _schedules(cls, value: dict[str, str]) -> dict[str, str]:
        from croniter import croniter

        for kind, expr in value.items():
            if kind not in DEFAULT_SCHEDULES:
                known = ", ".join(DEFAULT_SCHEDULES)
                raise ValueError(f"unknown schedule {kind!r} (known: {known})")
            if expr and not croniter.is_valid(expr):
                raise ValueError(f"schedule {kind!r} is not a cron expression: {expr!r}")
        return value

    @field_validator("exclude_schemas")
    @classmethod
    def _schemas(cls, value: list[str]) -> list[str]:
        for name in value:
            # Any name PostgreSQL allows: pg_dump gets it as an exact pattern, the facts
            # compare it exactly.
            if not name or len(name.encode()) > 63 or "\0" in name:
                raise ValueError(f"exclude_schemas: {name!r} is not a schema name")
        return value

    @property
    def parsed_dsn(self) -> PgDsn:
        return PgDsn.parse(self.dsn.get_secret_value())

    def effective_schedules(self) -> dict[str, str]:
        defaults = dict(DEFAULT_SCHEDULES)
        if self.verify_every_archive:  # continuous proof: daily slots, each within the budget
            defaults["verify"] = CONTINUOUS_VERIFY_SCHEDULE
        return {**defaults, **self.schedules}


WebhookEvent = Literal["job.succeeded", "job.failed", "job.cancelled", "job.stalled",
                      "rpo.breach", "backup.suspect", "copy.failed"]
ALL_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = (
    "job.succeeded", "job.failed", "job.cancelled", "job.stalled", "rpo.breach",
    "backup.suspect", "copy.failed")


class WebhookConfig(BaseModel):
    # A Slack or chat webhook URL is a credential: kept out of reprs (and so out of tracebacks).
    url: HttpUrl = Field(repr=False)
    format: Literal["json", "slack"] = "json"
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(ALL_WEBHOOK_EVENTS))


class ApiToken(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the token")
    role: Role


class Settings(BaseSettings):
    """pgvault's settings; see `.env.example` for each one explained."""

    model_config = SettingsConfigDict(
        env_prefix="PGVAULT_", env_file=".env", extra="ignore", validate_default=True
    )

    # -- contract (SPEC section 5)
    database_url: SecretStr = Field(description="metadata database DSN (postgresql://)")
    storage_url: str = Field(description="s3://bucket/prefix or file:///absolute/path")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint")
    s3_region: str = Field("us-east-1")
    object_lock_days: int | None = Field(None, ge=1, le=36500, description=(
        "S3 Object Lock retention of every object written to the primary storage"))
    object_lock_mode: ObjectLockMode = "governance"
    copies: list[CopyConfig] = Field(default_factory=list, description=(
        "further storage locations every archive is also written to (SPEC 2.15)"))
    gpg_home: Path = Field(description="GnuPG home directory (keyring)")
    gpg_recipients: list[str] = Field(description="JSON list of recipient key fingerprints")
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    api_tokens: list[ApiToken] = Field(default_factory=list)

    # -- recovery objectives
    rpo_hours: float = Field(24, gt=0)
    rto_hours: dict[int, float] = Field(default_factory=lambda: {1: 1.0, 2: 4.0, 3: 8.0})

    # -- backup pipeline
    zstd_level: int = Field(1, ge=1, le=19)
    zstd_threads: int = Field(0, ge=0, description="0 = one per core")
    upload_part_size: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    upload_concurrency: int = Field(2, ge=1, le=8)
    lock_wait_timeout_s: int = Field(60, ge=1)
    stall_timeout_s: float = Field(900, gt=0, description=(
        "seconds without a change of phase or progress before a running job fails as stalled"))
    gpg_passphrase: SecretStr | None = Field(None, description="passphrase of the private key")
    work_dir: Path | None = Field(None, description="scratch space for restores (default: tmp)")
    pg_bin_dirs: list[Path] = Field(
        default_factory=list,
        description="JSON list of directories holding pg_dump, pg_restore, psql, ... (one "
                    "PostgreSQL version each); when set, the only places searched (default: "
                    "/usr/lib/postgresql/<major>/bin, then PATH)")

    # -- jobs
    worker_concurrency: int = Field(2, ge=0, le=32, description="jobs run at once per replica")
    lease_seconds: float = Field(30, ge=2)
    poll_interval_s: float = Field(0.5, gt=0)
    shutdown_grace_s: float = Field(20, ge=0)
    progress_interval_s: float = Field(0.5, gt=0)

    # -- schedules and notifications
    scheduler_enabled: bool = Field(True, description="run schedules on this replica")
    schedule_interval_s: float = Field(30, gt=0, description="how often schedules are checked")
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_s: float = Field(1.0, gt=0)

    # -- monitoring
    monitoring_statement_timeout_ms: int = Field(3000, ge=100)
    monitoring_connect_timeout_s: float = Field(3, gt=0)
    monitoring_cache_s: float = Field(2.0, ge=0, description="how long a view's answer is reused")
    monitoring_query_max_chars: int = Field(200, ge=0)
    long_query_seconds: float = Field(300, gt=0)

    incomplete_grace_hours: float = Field(
        24, gt=0, description="incomplete archives and open uploads younger than this are kept")
    audit_retention_days: int = Field(365, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        try:
            PgDsn.parse(value.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"database_url {exc}") from None
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        return check_storage_url(value)

    @field_validator("object_lock_days")
    @classmethod
    def _lockable(cls, value: int | None, info: ValidationInfo) -> int | None:
        return check_lockable(value, info, "storage_url")

    @field_validator("copies")
    @classmethod
    def _copy_names(cls, value: list[CopyConfig]) -> list[CopyConfig]:
        names = [c.name for c in value]
        if len(names) != len(set(names)):
            raise ValueError("two copies share one name")
        for copy in value:
            copy.credentials()  # a named variable that is unset fails at start-up, not later
        return value

    @field_validator("gpg_recipients", mode="before")
    @classmethod
    def _recipients_upper(cls, value: object) -> object:
        if isinstance(value, list):
            return [v.replace(" ", "").upper() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("gpg_recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one recipient fingerprint is needed")
        for fpr in value:
            if not FINGERPRINT_RE.match(fpr):
                raise ValueError(
                    f"{fpr!r} is not a 40-hex-digit fingerprint (pin keys by fingerprint, "
                    "never by e-mail: gpg would look an address up on the network)"
                )
        return value

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        for name in value:
            if not TARGET_NAME_RE.match(name):
                raise ValueError(f"target name {name!r} must match {TARGET_NAME_RE.pattern}")
        return value

    @field_validator("rto_hours")
    @classmethod
    def _rto(cls, value: dict[int, float]) -> dict[int, float]:
        if set(value) != {1, 2, 3} or any(v <= 0 for v in value.values()):
            raise ValueError("rto_hours needs positive hours for severities 1, 2 and 3")
        return value

    @model_validator(mode="after")
    def _distinct_locations(self) -> Settings:
        # A copy that is the primary (or another copy) under a second name is no copy, and a
        # failing "copy" would delete the primary's objects as its own (SPEC 2.15).
        seen = {same_place(self.storage_url, self.s3_endpoint_url): "the primary storage"}
        for copy in self.copies:
            place = same_place(copy.url, copy.s3_endpoint_url)
            if place in seen:
                raise ValueError(f"copy {copy.name} is the same place as {seen[place]}")
            seen[place] = f"copy {copy.name}"
        return self

    @model_validator(mode="after")
    def _unique_tokens(self) -> Settings:
        hashes = [t.sha256.lower() for t in self.api_tokens]
        if len(hashes) != len(set(hashes)):
            raise ValueError("api_tokens: two tokens share one hash")
        return self

    @property
    def metadata_dsn(self) -> PgDsn:
        return PgDsn.parse(self.database_url.get_secret_value())

    def secrets(self) -> list[str]:
        """Every secret value known to the settings, for scrubbing text before it is stored."""
        found = [self.database_url.get_secret_value()]
        for dsn in [self.metadata_dsn] + [t.parsed_dsn for t in self.targets.values()]:
            if dsn.password is not None:
                found.append(dsn.password.get_secret_value())
        found += [t.dsn.get_secret_value() for t in self.targets.values()]
        if self.gpg_passphrase is not None:
            found.append(self.gpg_passphrase.get_secret_value())
        found += [str(hook.url) for hook in self.webhooks]
        for copy in self.copies:
            creds = copy.credentials()
            if creds is not None:
                found.append(creds[1])
        return [s for s in found if len(s) >= 3]


class ConfigError(Exception):
    """Settings or an environment that cannot work; the message is meant for the operator, one
    line per problem (see :func:`report`)."""


def report(exc: ConfigError) -> None:
    """Print each problem as one ``pgvault:`` line on stderr (no traceback)."""
    for line in str(exc).splitlines():
        if line.strip():
            print(f"pgvault: {line.strip()}", file=sys.stderr, flush=True)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per invalid value, naming its variable and where in the value the problem is; the
    value itself is never shown (it may be a DSN with a password)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        var = "PGVAULT_" + str(err["loc"][0]).upper() if err["loc"] else "PGVAULT_*"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"invalid configuration: {var} ({loc}): {msg}")
    return "\n".join(lines)


def describe_settings_error(exc: SettingsError) -> str:
    """pydantic-settings reports a JSON value it could not parse without saying where; the
    variable is found by its value (the parser's ``doc``), and only the position is shown."""
    cause = exc.__cause__
    if isinstance(cause, json.JSONDecodeError):
        var = _variable_holding(cause.doc)
        return (f"invalid configuration: {var}: invalid JSON at line {cause.lineno} column "
                f"{cause.colno}: {cause.msg}")
    return f"invalid configuration: {exc}"  # names the field and the source, never the value


def _variable_holding(value: str) -> str:
    for key, env_value in os.environ.items():
        if key.upper().startswith("PGVAULT_") and env_value == value:
            return key.upper()
    try:
        from dotenv import dotenv_values

        for key, dotenv_value in dotenv_values(".env").items():
            if key.upper().startswith("PGVAULT_") and dotenv_value == value:
                return f"{key.upper()} (in .env)"
    except OSError:
        pass
    return "a PGVAULT_ variable"


def load_settings() -> Settings:
    """Settings from the environment, or a :class:`ConfigError` that says what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        raise ConfigError(describe_settings_error(exc)) from None


__all__ = [
    "BACKUP_ID_RE",
    "DATABASE_NAME_RE",
    "TARGET_NAME_RE",
    "ApiToken",
    "ConfigError",
    "PgDsn",
    "Settings",
    "TargetConfig",
    "load_settings",
    "report",
]
