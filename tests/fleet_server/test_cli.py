"""`fleet user add` and `fleet token create`: mistakes end in one line and exit 2; passwords are never stored."""

from __future__ import annotations

from sqlalchemy import select

from fleet.server.auth import lookup, verify_password
from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine
from tests.fleet_server.conftest import cli


def test_users_and_tokens_from_the_command_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    # given a new operator, when added, then the stored hash verifies the password and is not the password
    r = cli("fleet", "user", "add", "ada", "--role", "operator", "--password-env", "PW", "--db", db,
            env={"PW": "long-enough-pw"})
    assert r.returncode == 0 and "ada (operator) added" in r.stdout, r.stderr
    engine = make_engine(db)
    with engine.connect() as conn:
        stored = conn.execute(select(t.users.c.password_hash)).scalar_one()
    assert "long-enough-pw" not in stored and verify_password("long-enough-pw", stored)
    assert not verify_password("long-enough-pX", stored)
    # and a token is printed once, stored only as a hash, and names its user
    r = cli("fleet", "token", "create", "ada", "--db", db)
    token = r.stdout.strip()
    assert r.returncode == 0 and len(token) >= 40
    with engine.connect() as conn:
        assert token not in str(conn.execute(select(t.tokens)).all())
    assert lookup(engine, token, "api").name == "ada" and lookup(engine, token + "x", "api") is None
    # when mistakes are made, then one line and exit 2 each
    cases = [
        (("fleet", "user", "add", "ada", "--role", "viewer", "--password-env", "PW"), "already exists"),
        (("fleet", "user", "add", "bo", "--role", "viewer", "--password-env", "PW_SHORT"), "too short"),
        (("fleet", "user", "add", "bad name", "--role", "viewer", "--password-env", "PW"), "invalid user name"),
        (("fleet", "token", "create", "nobody"), "no user 'nobody'"),
        (("fleet", "serve", "--db", "mysql://x/y", "--broker", "mqtt://127.0.0.1:1"), "unsupported database"),
        (("fleet", "token", "create", "ada", "--db", "postgresql://fleet@127.0.0.1:1/none"),
         "cannot open the database"),
    ]
    for args, message in cases:
        r = cli(*args, "--db", db, env={"PW": "long-enough-pw", "PW_SHORT": "short"}) \
            if "--db" not in args else cli(*args, env={"PW": "x" * 9})
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    engine.dispose()
