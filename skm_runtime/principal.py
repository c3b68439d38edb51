"""The authenticated principal, carried between services in call metadata.

The gateway authenticates every public call and forwards the principal (tenant, user,
roles) as `x-skm-principal-bin`, a serialized `skm.type.v1.Principal`. Services are
reachable only inside the mesh (loopback or the cluster network), so they read it as
given; the gateway strips any such header a client sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from skm.type.v1 import principal_pb2

PRINCIPAL_KEY = "x-skm-principal-bin"
# Set by the gateway on every call it forwards from outside the mesh.
FORWARDED_BY_KEY = "x-skm-forwarded-by"


_ROLE_NAMES = {
    principal_pb2.ROLE_MEMBER: "member",
    principal_pb2.ROLE_OPERATOR: "operator",
    principal_pb2.ROLE_ADMIN: "admin",
}
_ROLES = {name: number for number, name in _ROLE_NAMES.items()}


def role_names(message: principal_pb2.Principal) -> tuple[str, ...]:
    """The principal's roles as the words services use ("member", "operator", "admin")."""
    return tuple(_ROLE_NAMES[role] for role in message.roles if role in _ROLE_NAMES)


def principal_message(tenant: str, user: str, roles: Iterable[str]) -> principal_pb2.Principal:
    """The wire form of a principal; unknown role words are dropped."""
    return principal_pb2.Principal(tenant=tenant, user=user, roles=[_ROLES[r] for r in roles if r in _ROLES])


def principal_metadata(principal: principal_pb2.Principal) -> tuple[tuple[str, bytes], ...]:
    return ((PRINCIPAL_KEY, principal.SerializeToString()),)


def principal_from(metadata: Iterable[Any] | None) -> principal_pb2.Principal | None:
    """The principal a call carries, or None (also for undecodable bytes)."""
    for key, value in metadata or ():
        if key == PRINCIPAL_KEY and isinstance(value, bytes):
            try:
                return principal_pb2.Principal.FromString(value)
            except Exception:  # noqa: BLE001  # malformed metadata is no principal
                return None
    return None
