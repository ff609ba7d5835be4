"""registry lifecycle: deletion tombstones, descendant owners, pins and use times

Ancestries, datasets, learngenes, their versions and descendants get ``deleted_at`` and ``deleted_by``: a deleted
row stays as a tombstone (who, when, its sha256) so that lineage naming it stays readable and its id, name or
version number is never handed to something else. Descendants get an ``owner`` (backfilled from the job that
first produced each), ``pinned`` (never evicted from the descendant cache) and ``last_used_at`` (the cache evicts
the least recently used first; backfilled with ``created_at``).

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TOMBSTONED = ("ancestries", "datasets", "learngenes", "learngene_versions", "descendants")


def upgrade() -> None:
    for table in TOMBSTONED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
            batch.add_column(sa.Column("deleted_by", sa.String(length=100), nullable=True))
    with op.batch_alter_table("descendants") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(batch.f("ix_descendants_owner"), ["owner"], unique=False)
    op.execute(sa.text(
        "UPDATE descendants SET owner = (SELECT jobs.owner FROM jobs WHERE jobs.id = descendants.job_id),"
        " last_used_at = created_at"))


def downgrade() -> None:
    with op.batch_alter_table("descendants") as batch:
        batch.drop_index(batch.f("ix_descendants_owner"))
        batch.drop_column("last_used_at")
        batch.drop_column("pinned")
        batch.drop_column("owner")
    for table in reversed(TOMBSTONED):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("deleted_by")
            batch.drop_column("deleted_at")
