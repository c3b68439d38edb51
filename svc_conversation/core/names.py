"""Resource names and page tokens as callers send them, checked once."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation, InvalidArgument
from svc_conversation.errors import InvalidPageToken, InvalidSession, PrincipalMissing, SessionNotFound, TurnNotFound

# A turn's ordinal in its name: ASCII digits, no leading zero, within Postgres' integer.
_ORDINAL = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ORDINAL = 2**31 - 1


def caller(principal: Principal | None) -> Principal:
    if principal is None:
        raise PrincipalMissing("the call carries no principal the mesh signed")
    return principal


def _check_tenant(principal: Principal | None, name: str) -> Principal:
    principal = caller(principal)
    tenant = name.split("/sessions/")[0]
    if not name.startswith("tenants/") or "/" in tenant.removeprefix("tenants/"):
        raise InvalidSession(f"{name!r} is not a session name", metadata={"session": name})
    if tenant != principal.tenant:
        # Another tenant's session looks exactly like one that does not exist.
        raise SessionNotFound(f"session {name!r} does not exist", metadata={"session": name})
    return principal


def session_name(principal: Principal | None, name: str) -> tuple[Principal, str]:
    """The caller and the session ``name`` (a session's or one of its turns') names, if the
    caller's tenant holds it."""
    name = name.strip()
    session = name.split("/turns/")[0]
    parts = session.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "sessions" or not parts[1] or not parts[3]:
        raise InvalidSession(f"{name!r} is not a session name", metadata={"session": name})
    return _check_tenant(principal, session), session


def turn_ordinal_of(name: str) -> int:
    """The ordinal of a turn's name, checked."""
    parts = name.split("/")
    if len(parts) != 6 or parts[4] != "turns" or not _ORDINAL.fullmatch(parts[5]) or int(parts[5]) > _MAX_ORDINAL:
        raise TurnNotFound(f"{name!r} is not a turn name", metadata={"turn": name})
    return int(parts[5])


def check_uuid(value: str, field: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a UUID", violations=[FieldViolation(field, "required: a UUID")]
        ) from None


def page_token(token: str) -> dict[str, object]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise InvalidPageToken("the page token is not one this service issued") from None
    if not isinstance(value, dict):
        raise InvalidPageToken("the page token is not one this service issued")
    return value


def after_of(token: str) -> int:
    """The position an ordinal or sequence page token names (0 for none)."""
    if not token:
        return 0
    value = page_token(token).get("after")
    if not isinstance(value, int):
        raise InvalidPageToken("the page token is not one this service issued")
    return value


def token_of(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def page_size(size: int, default: int) -> int:
    if size < 0:
        raise InvalidArgument("page_size must not be negative", violations=[FieldViolation("page_size", "negative")])
    return min(size or default, 1000)


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
