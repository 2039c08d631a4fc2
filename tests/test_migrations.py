"""The Alembic chain builds exactly the schema the models describe, and unwinds."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from retrieval.index import create_index
from retrieval.store.database import current_revision, head_revision, migrations_config, upgrade_to_head
from retrieval.store.schema import Base


def test_declared_head_is_the_head_of_the_chain() -> None:
    import migrations

    assert migrations.HEAD == head_revision()


def test_opening_an_index_migrates_it(tmp_path: Path) -> None:
    index = create_index(tmp_path / "idx")
    assert current_revision(index.engine) == head_revision()


def test_one_chain_builds_the_models_schema_on_both_backends_and_unwinds(db_url: str) -> None:
    """Names included: the metadata's naming convention is PostgreSQL's own, so a later migration can drop a
    constraint by name on either backend."""
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    upgrade_to_head(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    if engine.dialect.name == "postgresql":
        uniques = {c["name"] for c in inspect(engine).get_unique_constraints("vectors")}
        assert uniques == {"vectors_model_id_content_hash_key"}
    config = migrations_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()
