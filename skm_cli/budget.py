"""`skm budget`: a tenant's model budgets, which are svc_policy's model_budget objects.

A budget for a role ("primary", "utility", "pre_slm", "embedding") is the object
model_budget:tenants/{t}/modelBudgets/{role} with three kinds of tuples: its `tenant` (it
exists), its `spender`s (the tenant's members by default), and one `exhausted` tuple whose
budget_exhausted condition holds the limit in USD. svc_conversation refuses a PRIMARY call of
the tenant once its spend this month (svc_analytics) is past the limit.

`set` replaces the limit: OpenFGA keeps one `exhausted` tuple per budget, so the old one is
deleted before the new one is written (for that moment the budget has no limit).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2

from skm.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from skm.policy.v1 import access_pb2, policy_service_pb2
from skm.type.v1 import model_pb2
from skm_cli.errors import CliError

ROLES = ("primary", "utility", "pre_slm", "embedding")
CONDITION = "budget_exhausted"

Auth = Callable[[str], Any]


def budget_object(tenant: str, role: str) -> str:
    return f"model_budget:tenants/{tenant}/modelBudgets/{role}"


def _read(stub: Any, auth: Auth, tenant: str, obj: str, relation: str) -> list[access_pb2.Relationship]:
    found: list[access_pb2.Relationship] = []
    token = ""
    while True:
        reply = stub.ReadRelationships(
            policy_service_pb2.ReadRelationshipsRequest(
                parent=f"tenants/{tenant}", relation=relation, object=obj, page_size=1000, page_token=token
            ),
            timeout=10,
            metadata=auth("ReadRelationships"),
        )
        found.extend(reply.relationships)
        token = reply.next_page_token
        if not token:
            return found


def limit_of(relationships: list[access_pb2.Relationship]) -> float | None:
    """The limit in USD the budget's `exhausted` tuple holds, None when it has none."""
    for relationship in relationships:
        if relationship.condition.name == CONDITION and "limit_usd" in relationship.condition.context.fields:
            return float(relationship.condition.context.fields["limit_usd"].number_value)
    return None


def set_budget(stub: Any, auth: Auth, args: argparse.Namespace) -> int:
    if args.limit_usd is None or args.limit_usd < 0:
        raise CliError("`skm budget set` needs --limit-usd, 0 or more")
    tenant, obj = args.tenant, budget_object(args.tenant, args.role)
    spenders = args.spender or [f"tenant:tenants/{tenant}#member"]
    old = _read(stub, auth, tenant, obj, "exhausted")
    if old:
        stub.DeleteRelationships(
            policy_service_pb2.DeleteRelationshipsRequest(parent=f"tenants/{tenant}", relationships=old),
            timeout=10,
            metadata=auth("DeleteRelationships"),
        )
    limit = struct_pb2.Struct()
    limit.update({"limit_usd": args.limit_usd})
    relationships = [
        access_pb2.Relationship(subject=f"tenant:tenants/{tenant}", relation="tenant", object=obj),
        *(access_pb2.Relationship(subject=s, relation="spender", object=obj) for s in spenders),
        access_pb2.Relationship(
            subject=f"{obj}#spender",
            relation="exhausted",
            object=obj,
            condition=access_pb2.RelationshipCondition(name=CONDITION, context=limit),
        ),
    ]
    stub.WriteRelationships(
        policy_service_pb2.WriteRelationshipsRequest(parent=f"tenants/{tenant}", relationships=relationships),
        timeout=10,
        metadata=auth("WriteRelationships"),
    )
    print(f"{obj}: {args.limit_usd:g} USD a month for {', '.join(spenders)}", file=sys.stderr)
    return 0


def remove_budget(stub: Any, auth: Auth, args: argparse.Namespace) -> int:
    tenant, obj = args.tenant, budget_object(args.tenant, args.role)
    held = [r for relation in ("exhausted", "spender", "tenant") for r in _read(stub, auth, tenant, obj, relation)]
    if not held:
        raise CliError(f"tenants/{tenant} has no {args.role} budget")
    stub.DeleteRelationships(
        policy_service_pb2.DeleteRelationshipsRequest(parent=f"tenants/{tenant}", relationships=held),
        timeout=10,
        metadata=auth("DeleteRelationships"),
    )
    print(f"{obj}: removed (the role's calls are no longer limited)", file=sys.stderr)
    return 0


def show_budget(stub: Any, auth: Auth, analytics: Any, metadata: Any, args: argparse.Namespace) -> dict[str, Any]:
    tenant, obj = args.tenant, budget_object(args.tenant, args.role)
    exists = bool(_read(stub, auth, tenant, obj, "tenant"))
    limit = limit_of(_read(stub, auth, tenant, obj, "exhausted")) if exists else None
    spenders = [r.subject for r in _read(stub, auth, tenant, obj, "spender")] if exists else []
    role = model_pb2.ModelRole.Value(f"MODEL_ROLE_{args.role.upper()}")
    spend = analytics.GetModelSpend(
        analytics_service_pb2.GetModelSpendRequest(tenant=f"tenants/{tenant}", role=role),
        timeout=10,
        metadata=metadata,
    )
    spent = spend.spent.units + spend.spent.nanos / 1e9
    return {
        "budget": obj,
        "exists": exists,
        "limit_usd": limit,
        "spenders": spenders,
        "spent_usd": spent,
        "model_calls": spend.model_calls,
        "since": spend.period_start_time.ToJsonString(),
    }


def render(shown: dict[str, Any]) -> str:
    since = shown["since"][:10]
    spent = f"{shown['spent_usd']:.4f} USD in {shown['model_calls']} call(s) since {since}"
    if not shown["exists"]:
        return f"{shown['budget']}: no budget (spends freely); {spent}"
    limit = shown["limit_usd"]
    if limit is None:
        return f"{shown['budget']}: no limit set; {spent}"
    share = f"{shown['spent_usd'] / limit:.0%}" if limit else "-"
    over = "  OVER: the role's calls are refused" if shown["spent_usd"] > limit else ""
    return f"{shown['budget']}: {spent} of {limit:g} USD ({share}){over}\n  spenders: {', '.join(shown['spenders'])}"


def analytics_stub(channel: Any) -> Any:
    return analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
