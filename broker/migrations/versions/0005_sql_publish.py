"""Publishing from SQL: `eventbroker.publish(...)` in a schema that holds only the API.

A service on the broker's PostgreSQL server calls it inside its own
transaction: the event is stored with the service's change or not at all (see
`broker.storage.sql_publish` and docs/outbox.md). The function names the
broker's tables with the schema they are in now; nobody may call it until an
operator grants `USAGE` on the schema and `EXECUTE` on the function. The
limits are written into its body: a release that changes one re-creates it in
a migration of its own. SQLite has no such transactions to join: nothing to do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

from broker.storage.sql_publish import create_statements, drop_statements

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    tables_schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    for statement in create_statements(tables_schema):
        conn.exec_driver_sql(statement)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for statement in drop_statements():
        conn.exec_driver_sql(statement)
