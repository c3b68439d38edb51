"""What a policy change announcement says, and how caches scope it: pure, shared by the
policy client (skm_runtime/policy_client.py) and svc_policy's own decision cache.

svc_policy publishes "{kind} {tenant}" on CHANGES_CHANNEL after every relationship change.
A change is scoped to its tenant because no relationship may reach across tenants
(svc_policy refuses such writes and denies such checks), so it cannot alter another
tenant's decisions.
"""

from __future__ import annotations

CHANGES_CHANNEL = "skm:policy:changes"


def change_message(kind: str, tenant: str) -> str:
    """What svc_policy publishes on CHANGES_CHANNEL: "{kind} {tenant}", e.g.
    "relationships tenants/t1"."""
    return f"{kind} {tenant}"


def changed_tenant(message: str | bytes) -> str | None:
    """The tenant a change message names, or None (read as: every tenant changed)."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    parts = text.split(" ")
    if len(parts) == 2 and parts[1].startswith("tenants/") and parts[1].count("/") == 1 and len(parts[1]) > 8:
        return parts[1]
    return None


def object_tenant(object_: str) -> str:
    """The tenant "tenants/{t}" of an object "{type}:tenants/{t}/...", or "" when it names none."""
    parts = object_.partition(":")[2].split("/", 2)
    return f"tenants/{parts[1]}" if len(parts) >= 2 and parts[0] == "tenants" and parts[1] else ""


class TenantChanges:
    """Generation counters that say whether a remembered decision predates a change of its
    tenant: remember `generation(tenant)` with the decision and reuse it only while it is
    unchanged. `changed(None)` moves every tenant on. O(1) per change and per lookup."""

    def __init__(self) -> None:
        self._everyone = 0
        self._tenants: dict[str, int] = {}

    def generation(self, tenant: str) -> int:
        # Two counters in one number: a change of everyone moves every tenant on.
        return (self._everyone << 32) + self._tenants.get(tenant, 0)

    def changed(self, tenant: str | None) -> None:
        if tenant is None:
            self._everyone += 1
            self._tenants.clear()
        else:
            self._tenants[tenant] = self._tenants.get(tenant, 0) + 1
