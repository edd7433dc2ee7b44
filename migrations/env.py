"""Alembic environment: the connection is handed in by exmaild.store.schema."""

from alembic import context

from exmaild.store.model import metadata
from exmaild.store.textindex import include_name

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=include_name,  # the search index differs per database
)
with context.begin_transaction():
    context.run_migrations()
