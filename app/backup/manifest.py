"""The archive manifest (SPEC section 6) and archive naming.

An archive is ``<target>/<backup_id>/`` holding the objects its ``manifest.json`` lists. The
manifest is written last, after every object is complete and every stage exited 0: no manifest
means no backup.

:class:`Manifest` is the one description of ``manifest.json``, a storage contract read by every
pgvault version, older and newer: its keys are written exactly as they always were (in the same
order), every field a reader may meet absent (an older pgvault did not write it) is optional with
the default readers assume, and a field this version does not know (a newer pgvault's) is kept,
at every level, and written back unchanged.
"""

from __future__ import annotations

import json
import secrets
import string
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from app.integrations.pg_clients import ToolVersions

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE_OBJECT = "database.dump.zst.gpg"
GLOBALS_OBJECT = "globals.sql.zst.gpg"
# The database's own grants, settings and comment (JSON), encrypted: settings hold secrets.
PROPERTIES_OBJECT = "database-properties.json.zst.gpg"
_ALPHABET = string.ascii_lowercase + string.digits


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable by time: ``20261124T151600Z-k3x9a2``."""
    now = now or datetime.now(UTC)
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    return f"{now:%Y%m%dT%H%M%SZ}-{suffix}"


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def archive_prefix(target: str, backup_id: str) -> str:
    return f"{target}/{backup_id}/"


def manifest_key(target: str, backup_id: str) -> str:
    return f"{target}/{backup_id}/{MANIFEST}"


# Written as ``datetime.isoformat()`` always wrote them ("2026-11-24T00:00:12.031000+00:00").
IsoTime = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str)]


class _Part(BaseModel):
    # Unknown fields kept, and fields filled by name or by their JSON name ("schema").
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ArchiveObject(_Part):
    key: str = Field(description="relative to the archive folder")
    kind: str | None = Field(None, description="globals, database or database_properties "
                                               "(absent: the key names it)")
    size_bytes: int
    sha256: str
    encrypted: bool = True


class TableRows(_Part):
    schema_: str = Field(alias="schema")
    name: str
    rows: int | None = Field(None, description="exact, in the snapshot; null when not counted")


class MaterializedView(_Part):
    schema_: str = Field(alias="schema")
    name: str
    populated: bool | None = None


class Subscription(_Part):
    name: str
    enabled: bool | None = None


class Extension(_Part):
    name: str
    version: str | None = None


class Schema(_Part):
    name: str
    owner: str | None = None
    comment: str | None = None


class SchemalessObject(_Part):
    type: str = Field(description="event trigger, publication, user mapping, server, ...")
    names: list[str | None] = Field(description="its identifiers as the catalog holds them")


class IndexRef(_Part):
    schema_: str = Field(alias="schema")
    table: str | None = None
    name: str


class ConstraintRef(_Part):
    schema_: str = Field(alias="schema")
    table: str | None = None
    domain: str | None = None
    name: str


class Encryption(_Part):
    format: str | None = None
    recipients: list[str] = Field(default_factory=list)


class SettingName(_Part):
    role: str | None = None
    name: str


class PropertiesSummary(_Part):
    """What the manifest shows of the database's own properties (values are in the encrypted
    database-properties object)."""

    acl: list[dict[str, Any]] | None = None
    comment: bool = False
    settings: list[SettingName] = Field(default_factory=list)


class Anomaly(_Part):
    """Why the archive was suspect when written (SPEC 2.14): what changed against the median
    of the target's previous good archives."""

    kind: str = Field(description="size_drop, rows_drop or table_missing")
    table: str | None = Field(None, description=(
        "schema.name, a part double-quoted unless plain lower case; null for size_drop"))
    before: int | None = Field(None, description="the median before (bytes or rows)")
    now: int | None = Field(None, description="in this archive; null when the table is gone")


class Manifest(_Part):
    """``manifest.json`` (SPEC 6). Only ``backup_id`` and ``target`` are required: the archive's
    identity, checked against where it lies. Lists that older manifests lack and that readers tell
    apart from empty (``schemas``, ``invalid_indexes``, ``not_valid_constraints``) are None."""

    format_version: int | None = None
    backup_id: str
    target: str
    label: str | None = None
    job_id: UUID | None = None
    requested_by: str | None = None
    created_at: IsoTime | None = None
    finished_at: IsoTime | None = None
    server_version: str | None = None
    server_version_num: int | None = None
    pg_dump_version: str | None = None
    tools: ToolVersions = Field(default_factory=ToolVersions)
    database: str | None = None
    database_size_bytes: int | None = None
    database_encoding: str | None = None
    database_collate: str | None = None
    database_ctype: str | None = None
    dump_format: str | None = None
    compression: str | None = None
    compression_level: int | None = None
    encryption: Encryption | None = None
    snapshot: str | None = None
    exclude_schemas: list[str] = Field(default_factory=list)
    row_counts: str | None = Field(None, description="exact or none")
    objects: list[ArchiveObject] = Field(default_factory=list)
    tables: list[TableRows] = Field(default_factory=list)
    materialized_views: list[MaterializedView] = Field(default_factory=list)
    subscriptions: list[Subscription] = Field(default_factory=list)
    extensions: list[Extension] = Field(default_factory=list)
    schemas: list[Schema] | None = None
    schemaless_objects: list[SchemalessObject] = Field(default_factory=list)
    invalid_indexes: list[IndexRef] | None = None
    not_valid_constraints: list[ConstraintRef] | None = None
    database_properties: PropertiesSummary | None = None
    anomalies: list[Anomaly] = Field(default_factory=list, description=(
        "what made the archive suspect when it was written (empty: nothing, or the guard off)"))

    def as_stored(self) -> dict[str, Any]:
        """The JSON document: the fields it was read with (or written with), unknown ones too."""
        stored: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return stored


def dumps(manifest: Manifest) -> bytes:
    return json.dumps(manifest.as_stored(), indent=2, sort_keys=False).encode()


def size_bytes(manifest: Manifest) -> int:
    return sum(o.size_bytes for o in manifest.objects)
