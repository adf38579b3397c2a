"""Alembic environment: runs on the connection the server hands over (see fleet.server.db.engine.migrate)."""

from __future__ import annotations

from alembic import context

from fleet.server.db.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: a URL from alembic.ini or -x url=...
    from fleet.server.db.engine import make_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with make_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
