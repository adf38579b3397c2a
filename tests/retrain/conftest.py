"""The fleet server's database fixtures (SQLite and PostgreSQL) for the re-training tests."""

from tests.fleet_server.conftest import db_url, postgres  # noqa: F401 - fixtures
