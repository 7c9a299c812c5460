"""schedule slots: each scheduled slot fires once, whatever the number of replicas

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE schedule_slots (
        target text NOT NULL,
        kind text NOT NULL,
        slot timestamptz NOT NULL,
        fired_at timestamptz NOT NULL DEFAULT now(),
        outcome text NOT NULL,
        job_id uuid,
        PRIMARY KEY (target, kind, slot)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE schedule_slots")
