"""The alembic migrations and the SQLAlchemy models describe the same schema."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ccat_ops_db.migrate import alembic_config, current, upgrade
from ccat_ops_db.models import Base


def test_migrations_match_models(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_upgrade_is_idempotent(ops_db_url):
    upgrade(ops_db_url)
    upgrade(ops_db_url)
    head = ScriptDirectory.from_config(alembic_config(ops_db_url)).get_current_head()
    assert current(ops_db_url) == head
