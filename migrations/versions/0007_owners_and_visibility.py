"""learngenes get an owner; ancestries, datasets and learngenes a visibility (public or private)

Backfill. A learngene belongs to whoever published its first version (the owner of that version's job) or, when
that is unknown (seeded, or published while keys were not required), to the system owner ``admin``; every
existing learngene stays public, so that nothing its users relied on disappears. An ancestry or a dataset with
an owner becomes private: it was uploaded with a key, and private is what an upload is now unless it says
otherwise. One without an owner stays public: nobody can be kept from it.

Revision ID: 0007
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The owner of what the service made itself (``service.keys.auth.BOOTSTRAP_OWNER``); a literal here, as a
#: migration must not change when the code does.
SYSTEM_OWNER = "admin"
UPLOADED = ("ancestries", "datasets")


def upgrade() -> None:
    with op.batch_alter_table("learngenes") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("visibility", sa.String(length=10), nullable=False, server_default="public"))
        batch.create_index(batch.f("ix_learngenes_owner"), ["owner"], unique=False)
    for table in UPLOADED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("visibility", sa.String(length=10), nullable=False, server_default="public"))
    op.execute(sa.text(
        "UPDATE learngenes SET owner = COALESCE(("
        " SELECT jobs.owner FROM learngene_versions JOIN jobs ON jobs.id = learngene_versions.job_id"
        " WHERE learngene_versions.learngene_id = learngenes.id"
        " ORDER BY learngene_versions.version LIMIT 1), :system)"
    ).bindparams(system=SYSTEM_OWNER))
    for table in UPLOADED:
        op.execute(sa.text(f"UPDATE {table} SET visibility = 'private' WHERE owner IS NOT NULL"))


def downgrade() -> None:
    for table in UPLOADED:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("visibility")
    with op.batch_alter_table("learngenes") as batch:
        batch.drop_index(batch.f("ix_learngenes_owner"))
        batch.drop_column("visibility")
        batch.drop_column("owner")
