"""What a finished job's ``result`` holds, per kind: the OpenAPI document's typed description.

The runner stores each command's result dict as is (SPEC 4 names its fields, so the JSON is a
contract and no model may rename, drop or add to it). These models describe those dicts for
client generators; ``Job.result`` carries their union as its schema, and tests validate real
results against them (``extra="forbid"``), so the description cannot drift from the data.
A queued or running job has ``{}``; a failed one ``FailedResult``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from app.config import BACKUP_ID_RE

BackupIdStr = Annotated[str, Field(pattern=BACKUP_ID_RE.pattern,
                                   examples=["20261124T151600Z-k3x9a2"])]
PhaseDurations = Annotated[dict[str, float], Field(
    description="seconds spent in each phase",
    examples=[{"queued": 0.2, "dump": 41.2, "manifest": 0.1}])]
Source = Annotated[str, Field(
    description="where the objects were read from: primary when every object came from the "
                "primary storage; else the copy that served (the database object's, when "
                "several did) because the primary's was missing or failed its hash (SPEC 2.15)",
    examples=["primary", "offsite"])]
Sources = Annotated[dict[str, str], Field(
    description="each object (key relative to the archive folder) and the location it was read "
                "from",
    examples=[{"globals.sql.zst.gpg": "primary", "database.dump.zst.gpg": "offsite"}])]
ToolsUsed = Annotated[dict[str, str], Field(
    description="the PostgreSQL client programs this job chose for its server, with versions",
    examples=[{"pg_dump": "15.19", "pg_dumpall": "15.19"}])]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoredObject(_Model):
    key: str = Field(description="relative to the archive folder",
                     examples=["database.dump.zst.gpg"])
    size_bytes: int
    sha256: str


class BackupAnomaly(_Model):
    """What made a new archive suspect (SPEC 2.14), against the median of its target's previous
    good archives."""

    kind: Literal["size_drop", "rows_drop", "table_missing"]
    table: str | None = Field(description=(
        "schema.name, a part double-quoted unless plain lower case; null for size_drop"),
                              examples=["public.rental"])
    before: int | None = Field(description="the median before: dump bytes or rows")
    now: int | None = Field(description="in this archive; null when the table is gone")


class CopyOutcome(_Model):
    """What a backup left in one copy location (SPEC 2.15)."""

    status: Literal["complete", "missing"] = Field(description=(
        "complete: every object and the manifest landed; missing: the copy failed during the "
        "backup and holds nothing of this archive (reconciliation repairs it)"))
    detail: str | None = Field(description="why the copy is missing")


class BackupResult(_Model):
    """A succeeded backup."""

    backup_id: BackupIdStr
    size_bytes: int = Field(description="bytes stored, all objects")
    database_size_bytes: int = Field(description="pg_database_size at the snapshot")
    duration_s: float
    tables: int = Field(description="tables recorded in the manifest")
    rows: int = Field(description="rows counted in the snapshot, all tables")
    objects: list[StoredObject]
    label: str | None
    tools: ToolsUsed
    suspect: bool = Field(False, description="the archive is suspect: see anomalies (absent "
                          "from backups made before the anomaly guard)")
    anomalies: list[BackupAnomaly] = Field(default_factory=list)
    phase_durations_s: PhaseDurations
    copies: dict[str, CopyOutcome] = Field(default_factory=dict, description=(
        "each configured copy location (PGVAULT_COPIES) by name; the primary is not listed"),
        examples=[{"offsite": {"status": "complete", "detail": None}}])
    warnings: list[str] = Field(default_factory=list, description=(
        "what went wrong without failing the backup (a copy that is missing)"))


class IndexRef(_Model):
    schema_: str = Field(alias="schema")
    name: str
    table: str
    in_source: bool | None = Field(None, description="the source already had it at the "
                                   "backup (null: the manifest predates this fact)")


class ConstraintRef(_Model):
    schema_: str = Field(alias="schema")
    name: str
    table: str | None = Field(None, description="the constraint's table (null for a domain's)")
    domain: str | None = Field(None, description="the constraint's domain (null for a table's)")
    in_source: bool | None = Field(None, description="the source already had it at the "
                                   "backup (null: the manifest predates this fact)")


class SkippedProperty(_Model):
    what: str
    reason: str


class DatabaseProperties(_Model):
    """The database's own grants, settings and comment (never the settings' values)."""

    status: str = Field(examples=["applied", "not requested", "not recorded", "failed"])
    applied: list[str]
    skipped: list[SkippedProperty]
    error: str | None = None


class RowMismatch(_Model):
    schema_: str = Field(alias="schema")
    name: str
    expected: int
    found: int | None = Field(description="null when the table did not come back")
    error: str | None = Field(description="'missing' when the table did not come back")


class RowCounts(_Model):
    tables_checked: int
    mismatches: list[RowMismatch]
    ok: bool


class RefreshedView(_Model):
    name: str = Field(description="schema-qualified, quoted as needed")
    concurrently: bool
    duration_s: float


class AnalyzeStep(_Model):
    done: bool
    tables_analyzed: int | None = None
    duration_s: float | None = None


class GlobalsOutcome(_Model):
    created: list[str]
    skipped_existing: list[str]
    login_roles: list[str]


class RestoreChecklist(_Model):
    """The runbook's post-restore steps; a step that failed is named in ``errors``."""

    analyze: AnalyzeStep
    materialized_views_refreshed: list[RefreshedView]
    row_counts: RowCounts
    invalid_indexes: list[IndexRef]
    unvalidated_constraints: list[ConstraintRef]
    subscriptions_to_enable: list[str]
    errors: list[str]
    roles_to_reset_password: list[str] = Field(
        description="restored login roles: they have no password (dumped without)")
    globals: GlobalsOutcome | None = Field(description="null unless include_globals")
    database_properties: DatabaseProperties
    skipped: bool | None = Field(None, description="true when a cancel cut the post-restore "
                                 "steps short after an in-place restore had committed")


class RestoreResult(_Model):
    """A succeeded restore."""

    backup_id: BackupIdStr
    mode: Literal["new_database", "in_place"]
    database: str
    duration_s: float
    severity: Literal[1, 2, 3]
    rto_hours: float
    rto_met: bool = Field(description="duration_s within the severity's RTO")
    rows_match: bool | None = Field(description="null when the post-restore checks were cut "
                                    "short (in place, cancelled after the commit)")
    checklist: RestoreChecklist
    tools: ToolsUsed
    source: Source
    sources: Sources
    phase_durations_s: PhaseDurations


class VerifyResult(_Model):
    """A succeeded verification; the restore level adds the scratch database's checks."""

    backup_id: BackupIdStr
    level: Literal["checksum", "restore"]
    objects_checked: int
    toc_entries: int
    scratch_database: str | None = Field(None, description="restore level only; dropped after")
    scratch_database_dropped: bool | None = Field(None, description="restore level only: the "
                                                  "scratch database is gone")
    row_counts: RowCounts | None = Field(None, description="restore level only")
    invalid_indexes: list[IndexRef] | None = Field(None, description="restore level only")
    unvalidated_constraints: list[ConstraintRef] | None = Field(None,
                                                           description="restore level only")
    duration_s: float
    tools: ToolsUsed
    source: Source
    sources: Sources
    phase_durations_s: PhaseDurations


class RetentionDecision(_Model):
    backup_id: str
    reason: str = Field(examples=["older than 90 days"])
    locked_until: datetime | None = Field(None, description=(
        "kept because an object of the archive is under S3 Object Lock until then (SPEC 2.15); "
        "absent otherwise"))


class AbortedUpload(_Model):
    key: str
    started: str = Field(description="ISO 8601 time the multipart upload began")
    location: str = Field("primary", description="the storage location that held it")


class RetentionResult(_Model):
    """A succeeded retention run (or dry run: what would be deleted)."""

    dry_run: bool
    deleted: list[RetentionDecision]
    kept: list[RetentionDecision]
    uploads_aborted: list[AbortedUpload]
    retention_days: int
    retention_min_backups: int
    phase_durations_s: PhaseDurations


class MaintenanceResult(_Model):
    """A succeeded maintenance task: analyze fills the counts, the refresh its view list."""

    task: Literal["analyze", "refresh_materialized_views"]
    tables_analyzed: int | None = Field(None, description="analyze only")
    duration_s: float | None = Field(None, description="analyze only")
    materialized_views: list[RefreshedView] | None = Field(
        None, description="refresh_materialized_views only")
    phase_durations_s: PhaseDurations


class LocationFinding(_Model):
    found: Literal["complete", "missing", "incomplete", "damaged"] = Field(description=(
        "complete: the manifest and every object at its size (deep: and SHA-256); missing: "
        "nothing of the archive; incomplete: an object or the manifest absent, or short; "
        "damaged: an object of another size or (deep) SHA-256"))
    repaired: bool = Field(description="what was absent or damaged was copied from an intact "
                                       "location (verified on the way), the manifest last")
    detail: str | None = Field(description="what was wrong, and why it was not repaired")


class ReconcileResult(_Model):
    """A succeeded reconciliation: each archive's state in each location, and the repairs."""

    deep: bool = Field(description="every object was read back and its SHA-256 checked")
    archives: dict[str, dict[str, LocationFinding]] = Field(
        description="backup id -> location (primary, or a copy's name) -> finding",
        examples=[{"20261124T000012Z-k3x9a2": {
            "primary": {"found": "complete", "repaired": False, "detail": None},
            "offsite": {"found": "incomplete", "repaired": True,
                        "detail": "repaired: database.dump.zst.gpg missing"}}}])
    checked: int = Field(description="archives checked")
    repaired: int = Field(description="archive copies (archive and location) repaired")
    unrepaired: int = Field(description="archive copies found broken and left so")
    phase_durations_s: PhaseDurations


class FailedResult(BaseModel):
    """A failed or cancelled job: the step that failed, when one did (the error says why), and
    what the job's ending did or left (a verification adds what it found before it stopped)."""

    model_config = ConfigDict(extra="allow")

    failed_step: str | None = Field(None, examples=["pg_dump"])
    database: str | None = Field(None, description="restore: the database it created or "
                                 "replaced")
    database_dropped: bool | None = Field(None, description="restore: the database it created "
                                          "was dropped (false: it could not be, or was kept)")
    database_kept: bool | None = Field(None, description="restore: kept, as keep_on_failure "
                                       "asked")
    committed: bool | None = Field(None, description="in-place restore: the target holds the "
                                   "archive's data")
    roles_created: list[str] | None = Field(None, description="restore with globals: roles it "
                                            "created (the cluster's; they are not dropped)")
    scratch_database_dropped: bool | None = Field(None, description="verify: its scratch "
                                                  "database is gone")
    # Absent when the job never ran (cancelled while queued, or failed by the reaper).
    phase_durations_s: PhaseDurations = Field(default_factory=dict)


class PendingResult(_Model):
    """A queued or running job: ``{}``."""


BY_KIND: dict[str, type[BaseModel]] = {
    "backup": BackupResult, "restore": RestoreResult, "verify": VerifyResult,
    "retention": RetentionResult, "maintenance": MaintenanceResult,
    "reconcile": ReconcileResult,
}
MODELS: tuple[type[BaseModel], ...] = (*BY_KIND.values(), FailedResult, PendingResult)

_UNION = TypeAdapter(BackupResult | RestoreResult | VerifyResult | RetentionResult
                     | MaintenanceResult | ReconcileResult | FailedResult | PendingResult)
_SCHEMA = _UNION.json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
# Schemas of the models above and their parts, for the OpenAPI document's components.
COMPONENTS: dict[str, Any] = _SCHEMA.pop("$defs")

# The runtime value stays the stored dict, byte for byte; the schema is the union above.
JobResult = Annotated[dict[str, Any], WithJsonSchema({
    **_SCHEMA, "description": "per kind: BackupResult, RestoreResult, VerifyResult, "
    "RetentionResult, MaintenanceResult or ReconcileResult once succeeded; FailedResult once "
    "failed or cancelled; {} while queued or running"})]


def validate(kind: str, status: str, result: dict[str, Any]) -> BaseModel:
    """The model that describes this job's result, validated (tests use it to hold the line)."""
    if status == "succeeded":
        return BY_KIND[kind].model_validate(result)
    if status in ("failed", "cancelled"):
        return FailedResult.model_validate(result)
    return PendingResult.model_validate(result)
