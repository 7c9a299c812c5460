"""archive reviews (a suspect mark cleared by an operator) and per-location copy state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A suspect archive (SPEC 2.14) stays suspect until an operator says the change was
    # intended; the manifest, written once, keeps the anomalies themselves.
    op.execute("""
    CREATE TABLE archive_reviews (
        target text NOT NULL,
        backup_id text NOT NULL,
        cleared_by text NOT NULL,
        cleared_at timestamptz NOT NULL DEFAULT now(),
        reason text,
        PRIMARY KEY (target, backup_id)
    )""")
    # Each copy location's state of each archive (SPEC 2.15), as last written or checked.
    op.execute("""
    CREATE TABLE archive_copies (
        target text NOT NULL,
        backup_id text NOT NULL,
        location text NOT NULL,
        status text NOT NULL CHECK (status IN ('complete', 'missing', 'incomplete', 'damaged')),
        checked_at timestamptz NOT NULL DEFAULT now(),
        detail text,
        PRIMARY KEY (target, backup_id, location)
    )""")
    # The reconciliation job (SPEC 2.15) is a job kind of its own.
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check")
    op.execute("""ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK
        (kind IN ('backup','restore','verify','retention','maintenance','reconcile'))""")


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'reconcile'")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check")
    op.execute("""ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK
        (kind IN ('backup','restore','verify','retention','maintenance'))""")
    op.execute("DROP TABLE archive_copies")
    op.execute("DROP TABLE archive_reviews")
