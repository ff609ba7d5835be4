"""ancestry family: family, preprocessing, the Hugging Face layout converted from, and the upload key that makes
a re-upload of the same file with the same arguments answer the existing ancestry

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ancestries") as batch:
        batch.add_column(sa.Column("family", sa.String(length=40), nullable=False, server_default="vit"))
        batch.add_column(sa.Column("preprocessing", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("converted_from", sa.String(length=40), nullable=True))
        # Rows from before have none: they stay unique among themselves by their NULLs.
        batch.add_column(sa.Column("upload_key", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_ancestries_upload_key", ["upload_key"])


def downgrade() -> None:
    with op.batch_alter_table("ancestries") as batch:
        batch.drop_constraint("uq_ancestries_upload_key", type_="unique")
        batch.drop_column("upload_key")
        batch.drop_column("converted_from")
        batch.drop_column("preprocessing")
        batch.drop_column("family")
