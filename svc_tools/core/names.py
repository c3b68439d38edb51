"""Resource names the tool service accepts: parsing them, and keeping callers to their tenant."""

from __future__ import annotations

from skm_runtime.access import Principal
from svc_tools.errors import ExecutionNotFound, InvalidResourceName


def split_name(name: str, collection: str) -> tuple[str, str]:
    """ "tenants/{t}/{collection}/{id}" -> ("tenants/{t}", id); InvalidResourceName otherwise."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or not parts[1] or parts[2] != collection or not parts[3]:
        raise InvalidResourceName(f"expected tenants/{{tenant}}/{collection}/{{id}}", metadata={"name": name[:200]})
    return f"tenants/{parts[1]}", parts[3]


def id_in(name: str, tenant: str, collection: str) -> str | None:
    """The id of "{tenant}/{collection}/{id}", or None when `name` is not of that shape and tenant."""
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != tenant or parts[2] != collection or not parts[3]:
        return None
    return parts[3]


def turn_ids(name: str, tenant: str) -> tuple[str, str] | None:
    """(session id, turn id) of "{tenant}/sessions/{s}/turns/{t}", or None."""
    parts = name.split("/")
    if (
        len(parts) != 6
        or "/".join(parts[:2]) != tenant
        or parts[2] != "sessions"
        or not parts[3]
        or parts[4] != "turns"
        or not parts[5]
    ):
        return None
    return parts[3], parts[5]


def session_of(turn: str) -> str:
    """ "tenants/{t}/sessions/{s}" of a turn's name; "" for no turn."""
    return "/".join(turn.split("/")[:4]) if turn else ""


def check_tenant(parent: str) -> str:
    """`parent` itself when it is "tenants/{t}"; InvalidResourceName otherwise."""
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "tenants" or not parts[1]:
        raise InvalidResourceName("expected tenants/{tenant}", metadata={"name": parent[:200]})
    return parent


def own_execution(name: str, principal: Principal | None) -> str:
    """`name` when it names an execution the caller's tenant may see."""
    tenant, _ = split_name(name, "executions")
    if principal is not None and principal.tenant and principal.tenant != tenant:
        # Another tenant's executions do not exist for this caller.
        raise ExecutionNotFound("no such execution", metadata={"name": name})
    return name
