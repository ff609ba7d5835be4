"""jobs record what they charged: the descendant bytes of an owner's day are counted in the registry

A job that makes bytes for someone (an expansion) records the quota bucket it was charged to and how many bytes.
The daily descendant-bytes quota is the sum over the bucket's jobs of today (UTC) that did not fail and were not
cancelled: a failed or cancelled expansion gives its bytes back, a retry is charged once, and a request whose
transaction rolls back (a lost race for the same descendant, a database error) charges nothing. Before, the
charge went to a Redis counter ahead of the transaction and was never given back. Charges counted by those
counters on the day of the upgrade are not carried over.

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


# Plain ALTER TABLEs, not batch mode: SQLite's batch mode copies the table and drops the old one, which its foreign
# keys (job events and descendants name jobs) refuse. SQLite has had ADD and DROP COLUMN since 3.35.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("quota_bucket", sa.String(length=100), nullable=True))
    op.add_column("jobs", sa.Column("charged_bytes", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_quota_bucket_created_at", "jobs", ["quota_bucket", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_quota_bucket_created_at", table_name="jobs")
    for column in ("charged_bytes", "quota_bucket"):
        op.execute(sa.text(f"ALTER TABLE jobs DROP COLUMN {column}"))
