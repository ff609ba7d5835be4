"""learngene versions without a status: one is registered only when its job succeeds, so it was always ready

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("learngene_versions") as batch:
        batch.drop_column("status")


def downgrade() -> None:
    with op.batch_alter_table("learngene_versions") as batch:
        batch.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="ready"))
