"""jobs, idempotency keys, audit events

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE jobs (
        id uuid PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('backup','restore','verify','retention','maintenance')),
        target text NOT NULL,
        status text NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued','running','succeeded','failed','cancelled')),
        phase text NOT NULL DEFAULT 'queued',
        bytes_done bigint NOT NULL DEFAULT 0,
        bytes_total bigint,
        bytes_uploaded bigint NOT NULL DEFAULT 0,
        params jsonb NOT NULL DEFAULT '{}',
        result jsonb NOT NULL DEFAULT '{}',
        error jsonb,
        summary text NOT NULL DEFAULT '',
        requested_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        lease_owner text,
        lease_expires_at timestamptz,
        cancel_requested boolean NOT NULL DEFAULT false,
        -- what a reaper must clean up if the worker dies (pending upload, scratch database)
        cleanup jsonb NOT NULL DEFAULT '{}'
    )""")
    op.execute("CREATE INDEX jobs_queue ON jobs (created_at) WHERE status = 'queued'")
    op.execute("CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running'")
    op.execute("CREATE INDEX jobs_listing ON jobs (created_at DESC, id DESC)")
    op.execute("CREATE INDEX jobs_target_kind ON jobs (target, kind, finished_at DESC)")
    # One backup per target at a time, enforced by the database across replicas.
    op.execute("""
    CREATE UNIQUE INDEX jobs_one_active_backup ON jobs (target)
        WHERE kind = 'backup' AND status IN ('queued','running')""")
    op.execute("""
    CREATE TABLE idempotency_keys (
        caller text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (caller, key)
    )""")
    op.execute("""
    CREATE TABLE audit_events (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        action text NOT NULL,
        target text,
        outcome text NOT NULL,
        job_id uuid,
        details jsonb NOT NULL DEFAULT '{}'
    )""")
    op.execute("CREATE INDEX audit_events_at ON audit_events (at DESC, id DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE audit_events")
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE jobs")
