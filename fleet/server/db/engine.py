"""Engine from a URL (SQLite with WAL by default, PostgreSQL through psycopg 3) and Alembic migrations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from fleet.server.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
# JSON columns through orjson: encoding each stored record's document was a third of the write time with json.
_JSON: dict[str, Any] = {"json_serializer": lambda o: orjson.dumps(o).decode(), "json_deserializer": orjson.loads}


def data_dir() -> Path:
    """The user's data folder for the embedded database and the sample store."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edge-runtime" / "fleet"


def default_url() -> str:
    return f"sqlite:///{data_dir() / 'fleet.db'}"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver would be psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill, not a power cut
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def dialect_insert(conn: Any) -> Any:
    """The dialect's ``insert`` (SQLite's or PostgreSQL's), which has ``on_conflict_do_nothing``."""
    from sqlalchemy.dialects import postgresql, sqlite

    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: SQLite under the data folder, created if missing)."""
    url = normalise_url(url or default_url())
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False}, **_JSON)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")
    try:
        return create_engine(parsed, pool_size=5, max_overflow=5, pool_pre_ping=True, **_JSON)
    except NoSuchModuleError as exc:
        raise DatabaseError(f"database driver missing ({exc}): pip install 'edge-runtime[fleet]'") from None


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there)."""
    from alembic import command

    try:
        with engine.begin() as conn:
            cfg = _alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        reason = (str(exc.orig).strip().splitlines() or ["?"])[0]
        raise DatabaseError(f"cannot open the database {engine.url.render_as_string()}: {reason}") from None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return MigrationContext.configure(conn).get_current_revision()
