"""Users, passwords, API tokens, browser sessions with CSRF tokens, and the audit log.

Passwords are hashed with scrypt (stdlib ``hashlib.scrypt``, n=2**14, r=8, p=1, 16-byte salt). Tokens (API and
session) are 32 random bytes shown once; only their sha256 is stored, so a copy of the database does not let
anyone in. Roles: ``viewer`` reads; ``operator`` also acts (publish, request samples, ...).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, delete, insert, select

from fleet.server.db import tables as t
from fleet.server.errors import AuthError

Role = Literal["viewer", "operator"]
ROLES: tuple[str, ...] = ("viewer", "operator")
SESSION_TTL_S = 12 * 3600
_N, _R, _P = 1 << 14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        alg, n, r, p, salt, digest = stored.split("$")
        if alg != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    csrf: str | None = None  # set for browser sessions: every form post must carry it
    via: str = "token"  # token or session

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


def add_user(engine: Engine, name: str, password: str, role: str) -> None:
    if not _NAME.match(name):
        raise AuthError(f"invalid user name {name!r}: letters, digits, '_', '.', '@' or '-', at most 64")
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}: use viewer or operator")
    if len(password) < 8:
        raise AuthError("password too short: use at least 8 characters")
    with engine.begin() as conn:
        if conn.execute(select(t.users.c.id).where(t.users.c.name == name)).first() is not None:
            raise AuthError(f"user {name!r} already exists")
        conn.execute(insert(t.users).values(name=name, password_hash=hash_password(password), role=role,
                                            created=time.time()))


def _user_id(conn: Connection, name: str) -> int:
    row = conn.execute(select(t.users.c.id).where(t.users.c.name == name)).first()
    if row is None:
        raise AuthError(f"no user {name!r} (create one with: edge-runtime fleet user add {name} --role ...)")
    return int(row.id)


def create_token(engine: Engine, user: str, name: str = "api", kind: str = "api", ttl_s: float | None = None
                 ) -> tuple[str, str | None]:
    """A new token for ``user``: (token, csrf token for sessions). The token itself is not stored."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24) if kind == "session" else None
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(t.tokens).values(
            user_id=_user_id(conn, user), kind=kind, name=name[:128], token_hash=_token_hash(token), csrf=csrf,
            created=now, expires=None if ttl_s is None else now + ttl_s))
    return token, csrf


def login(engine: Engine, name: str, password: str) -> tuple[str, str] | None:
    """A session (token, csrf) for a right name and password, else None (same work either way)."""
    with engine.connect() as conn:
        row = conn.execute(select(t.users.c.password_hash).where(t.users.c.name == name)).first()
    stored = row.password_hash if row is not None else hash_password(secrets.token_hex(8))
    if not verify_password(password, stored) or row is None:
        return None
    token, csrf = create_token(engine, name, "browser", "session", SESSION_TTL_S)
    assert csrf is not None
    return token, csrf


def logout(engine: Engine, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(t.tokens).where(t.tokens.c.token_hash == _token_hash(token)))


def lookup(engine: Engine, token: str, kind: str) -> User | None:
    """The user a token of ``kind`` (api or session) belongs to, if it exists and has not expired."""
    j = t.tokens.join(t.users, t.tokens.c.user_id == t.users.c.id)
    q = select(t.users.c.id, t.users.c.name, t.users.c.role, t.tokens.c.csrf, t.tokens.c.expires).select_from(j) \
        .where(t.tokens.c.token_hash == _token_hash(token), t.tokens.c.kind == kind)
    with engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None or (row.expires is not None and row.expires < time.time()):
        return None
    return User(row.id, row.name, row.role, row.csrf, "session" if kind == "session" else "token")


def check_csrf(user: User, sent: str | None) -> bool:
    """Browser sessions must send their CSRF token with every action; bearer tokens need none."""
    if user.via != "session":
        return True
    return bool(sent) and user.csrf is not None and hmac.compare_digest(str(sent), user.csrf)


def audit(engine: Engine, user: str, action: str, target: str | None, outcome: str,
          detail: dict[str, Any] | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(insert(t.audit).values(ts=time.time(), user=user, action=action, target=target,
                                            outcome=outcome, detail=detail))
