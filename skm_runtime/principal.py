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
