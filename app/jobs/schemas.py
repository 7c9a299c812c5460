"""Job resources as the API shows them (SPEC section 4)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.jobs.results import JobResult
from app.pagination import Skipped

JobKind = Literal["backup", "restore", "verify", "retention", "maintenance", "reconcile"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Progress(BaseModel):
    bytes_done: int = Field(description="bytes processed so far in the current phase's stream")
    bytes_total: int | None = Field(description="estimate of the total, when known")
    bytes_uploaded: int = Field(0, description="bytes written to storage so far in this phase")


class JobError(BaseModel):
    title: str = Field(description=(
        "what ended the job: \"<Kind> failed\" (a step failed; the result's failed_step names "
        "it), \"stalled\" (the stall watchdog: no change of phase or progress for "
        "stall_timeout_s; its processes were killed, its backends ended, its upload aborted), "
        "\"Worker lost\" (its replica died; reaped), \"Cancelled\", \"Internal error\", or "
        "the title of another error it met"),
        examples=["Backup failed", "stalled", "Cancelled"])
    detail: str = Field(description="why, in words; for \"stalled\": for how long nothing "
                                    "moved, and at which phase")


class Job(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "0b9f3c1e-6a57-4d0e-9a51-3f4e2b8c7d10", "kind": "backup", "target": "demo",
        "status": "running", "phase": "dump",
        "progress": {"bytes_done": 73400320, "bytes_total": 176160768, "bytes_uploaded": 62914560},
        "created_at": "2026-11-24T15:16:00.120Z", "started_at": "2026-11-24T15:16:00.410Z",
        "finished_at": None, "requested_by": "ops-bot", "error": None, "result": {},
        "summary": "backup of demo: dumping, 42% of ~168 MB"}]})

    id: UUID
    kind: JobKind
    target: str
    status: JobStatus
    phase: str
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    requested_by: str
    error: JobError | None
    result: JobResult
    summary: str

    @classmethod
    def from_row(cls, row: Any) -> Job:
        """The job as shown; a stored error or result not in the expected shape (damaged, or
        written by another version) shows as such instead of failing every page it is on."""
        return cls(
            id=row["id"], kind=row["kind"], target=row["target"], status=row["status"],
            phase=row["phase"],
            progress=Progress(bytes_done=row["bytes_done"], bytes_total=row["bytes_total"],
                              bytes_uploaded=row["bytes_uploaded"]),
            created_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], requested_by=row["requested_by"],
            error=_error(row["error"]), result=_result(row["result"]), summary=row["summary"],
        )


def _error(stored: Any) -> JobError | None:
    if not stored:
        return None
    try:
        return JobError.model_validate(stored)
    except ValidationError:
        return JobError(title="unreadable error record",
                        detail="the stored error of this job is not in the expected shape")


def _result(stored: Any) -> dict[str, Any]:
    if stored is None:
        return {}
    if isinstance(stored, dict):
        return stored
    return {"unreadable": "the stored result of this job is not a JSON object"}


class JobList(BaseModel):
    items: list[Job]
    next_cursor: str | None
    skipped: list[Skipped] = Field(default_factory=list, description=(
        "jobs on this page that could not be shown (damaged, or of a kind this version does "
        "not know), with the reason; the page goes on without them"))
