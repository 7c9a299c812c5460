"""Monitoring views as the API shows them; each mirrors a dict from ``service.get_view``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

ViewName = Literal["connections", "bloat", "indexes", "tables", "snapshot"]

# The JSON these views had before they were typed, kept exactly: server times as Python's
# isoformat ("+00:00"), taken_at to the millisecond with "Z".
_DATE_TIME = WithJsonSchema({"type": "string", "format": "date-time"})
ServerTime = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str,
                                                 when_used="json"), _DATE_TIME]
TakenAt = Annotated[datetime, PlainSerializer(
    lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "Z"), return_type=str,
    when_used="json"), _DATE_TIME]


class _Model(BaseModel):
    # Each model mirrors a dict the service builds: a key it does not name is a bug to see, not
    # data to drop silently.
    model_config = ConfigDict(extra="forbid")


class _Row(_Model):
    # ``schema`` would shadow a BaseModel attribute: stored as ``schema_name``, shown as
    # ``schema``.
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True, extra="forbid")


class _View(_Model):
    target: str = Field(description="target name")
    taken_at: TakenAt = Field(description="when the view was taken (UTC)")


class ActiveConnection(_Model):
    pid: int
    database: str | None
    user: str | None
    application_name: str | None
    client_addr: str | None = Field(description="null for a Unix-socket or background process")
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    query: str | None = Field(description="query text, truncated to monitoring_query_max_chars")
    duration_s: float | None = Field(description="seconds since the current query started")
    backend_type: str | None


class ClientConnections(_Model):
    user: str | None
    client_addr: str | None
    count: int = Field(description="client connections from this user and address")
    active: int = Field(description="of which not idle")


class ConnectionsView(_View):
    total_connections: int = Field(description="client connections, all databases")
    max_connections: int
    used_percent: float
    active_count: int = Field(description="sessions not idle, ours excluded")
    long_running_count: int = Field(description="client sessions busy longer than the threshold")
    long_query_seconds: float = Field(description="the long-running threshold")
    active: list[ActiveConnection]
    by_client: list[ClientConnections]


class TableBloat(_Row):
    schema_name: str = Field(alias="schema")
    table: str
    size_bytes: int = Field(description="heap and TOAST pages")
    bloat_bytes: int | None = Field(description="estimated; null when never analyzed")
    bloat_ratio: float | None = Field(description="bloat_bytes / size_bytes, 0 to 1")
    fillfactor: int
    reliable: bool = Field(description="false when statistics are missing or unusable")


class IndexBloat(_Row):
    schema_name: str = Field(alias="schema")
    table: str
    index: str
    size_bytes: int
    bloat_bytes: int | None = Field(description="estimated; null when never analyzed")
    bloat_ratio: float | None = Field(description="bloat_bytes / size_bytes, 0 to 1")
    fillfactor: int
    reliable: bool = Field(description="false when statistics are missing or unusable")


class BloatView(_View):
    tables: list[TableBloat] = Field(description="tables and materialized views, most bloat first")
    indexes: list[IndexBloat] = Field(description="B-tree indexes, most bloat first")


class UnusedIndex(_Row):
    schema_name: str = Field(alias="schema")
    table: str
    index: str
    size_bytes: int
    definition: str


class InvalidIndex(_Row):
    schema_name: str = Field(alias="schema")
    table: str
    index: str
    definition: str


class IndexesView(_View):
    unused_count: int = Field(description="all unused indexes, even beyond the list's limit")
    unused_bytes: int
    invalid_count: int
    stats_reset: ServerTime | None = Field(
        description="scan counts start here; null: since the statistics were created")
    unused: list[UnusedIndex] = Field(
        description="never scanned and enforcing no constraint, largest first")
    invalid: list[InvalidIndex] = Field(description="indisvalid = false (e.g. a failed "
                                        "CREATE INDEX CONCURRENTLY)")


class TableStats(_Row):
    schema_name: str = Field(alias="schema")
    table: str
    n_live_tup: int
    n_dead_tup: int
    dead_ratio: float = Field(description="dead / (live + dead), 0 to 1")
    last_vacuum: ServerTime | None
    last_autovacuum: ServerTime | None
    last_analyze: ServerTime | None
    last_autoanalyze: ServerTime | None
    total_bytes: int | None = Field(description="table, TOAST and indexes")


class TablesView(_View):
    tables: list[TableStats] = Field(description="most dead tuples first")


class SnapshotView(_View):
    summary: str = Field(description="one line for chat bots, e.g. '12/100 connections (12%), "
                         "2 long-running queries, 3 unused indexes (48 MB), 1 invalid index, "
                         "worst bloat: public.orders 37% (1.2 GB)'")
    unavailable: dict[str, str] = Field(description=(
        "views that could not be taken this time (query timed out or refused), with the "
        "reason; each is null below, and the others are still there"))
    connections: ConnectionsView | None
    bloat: BloatView | None
    indexes: IndexesView | None
    tables: TablesView | None


MonitoringView = ConnectionsView | BloatView | IndexesView | TablesView | SnapshotView

MODELS: dict[str, type[_View]] = {
    "connections": ConnectionsView, "bloat": BloatView, "indexes": IndexesView,
    "tables": TablesView, "snapshot": SnapshotView,
}
