"""job kernel: error codes, publish time for the sweeper, no checkpoint key, descendants found by their job

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("error_code", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        # Checkpoints are found by job id; nothing ever read the key stored here.
        batch.drop_column("checkpoint_key")
    op.execute("UPDATE jobs SET published_at = created_at")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("published_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    with op.batch_alter_table("descendants") as batch:
        batch.create_index(batch.f("ix_descendants_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("descendants") as batch:
        batch.drop_index(batch.f("ix_descendants_job_id"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("checkpoint_key", sa.String(length=300), nullable=True))
        batch.drop_column("published_at")
        batch.drop_column("error_code")
