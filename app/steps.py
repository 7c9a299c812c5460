"""The named steps of pgvault's commands: one vocabulary for a job's phase (``set_phase``), the step
a failure names (``StepFailed(step, ...)``, stored as the result's ``failed_step``) and the
verdicts drawn from them (:data:`DAMAGE_STEPS`).

The values are stored: in the metadata database (``jobs.phase``, ``result->>'failed_step'``,
``phase_durations_s`` keys) and shown by the API. A member may be added, never renamed: a verdict
query must still match the rows older versions wrote. Where a phase and a failure have long used
different words for the same moment ("connecting" while it runs, "connect" when it fails), both
stay, side by side here.
"""

from __future__ import annotations

from enum import StrEnum


class Step(StrEnum):
    # Any job.
    STARTING = "starting"
    CONNECT = "connect"  # a connection to the target failed
    LEASE = "lease"
    CLIENT_PROGRAMS = "client programs"  # no pg_dump/pg_restore/psql fits the server

    # backup (app/backup/command.py), in order.
    CONNECTING = "connecting"  # snapshot(): open the snapshot and read the server's facts
    GLOBALS = "globals"  # upload_globals(); in a restore: apply them
    GLOBALS_UPLOAD = "globals upload"
    DUMP = "dump"  # upload_dump()
    DUMP_UPLOAD = "dump upload"
    DATABASE_PROPERTIES = "database properties"  # the document; in a restore: apply it
    DATABASE_PROPERTIES_UPLOAD = "database properties upload"
    MANIFEST = "manifest"  # write_manifest(); in a restore: read it

    # restore and verify (app/restore), in order.
    DOWNLOAD = "download"
    FETCH = "fetch"
    CHECKSUM = "checksum"
    DECRYPT = "decrypt"
    KEYS = "keys"
    UNPACK = "unpack"
    TABLE_OF_CONTENTS = "table of contents"
    PG_RESTORE_LIST = "pg_restore --list"
    PG_RESTORE_USE_LIST = "pg_restore --use-list"
    CREATE_DATABASE = "create database"
    RESTORE = "restore"
    PG_RESTORE = "pg_restore"
    RESTORE_IN_PLACE = "restore in place"
    RESTORE_IN_PLACE_ROLLED_BACK = "restore in place (rolled back)"
    POST_RESTORE = "post-restore"
    COUNT = "count"
    COMPARE = "compare"
    CHECKS = "checks"

    # archives and retention.
    READ_MANIFEST = "read manifest"
    LIST_ARCHIVE = "list archive"
    LIST_ARCHIVES = "list archives"
    DELETE_ARCHIVE = "delete archive"
    PLAN = "plan"
    DELETE = "delete"

    # reconciliation across locations (app/archives/reconcile.py).
    CHECK_LOCATIONS = "check locations"
    REPAIR = "repair"


# The upload that follows each streamed step of a backup.
UPLOAD_OF = {Step.GLOBALS: Step.GLOBALS_UPLOAD, Step.DUMP: Step.DUMP_UPLOAD,
             Step.DATABASE_PROPERTIES: Step.DATABASE_PROPERTIES_UPLOAD}

# Steps whose failure proves an archive broken; any other (storage unreachable, a worker lost, no
# room for a scratch database) says nothing about it.
DAMAGE_STEPS = frozenset({Step.CHECKSUM, Step.DECRYPT, Step.PG_RESTORE_LIST, Step.COMPARE})
