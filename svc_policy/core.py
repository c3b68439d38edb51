"""svc_policy's use cases: decide, hold for approval, resolve, run exactly once.

A blocked action's life (HeldState):

    PENDING --approve--> APPROVED --claim--> EXECUTING --complete--> EXECUTED
       |  \\--reject--> REJECTED      |
       |---expire---> EXPIRED  <------|   (an approval nobody claims also expires)
       \\---cancel---> CANCELLED <-----/

Every transition is a compare-and-set in the store, written with its event in one
transaction, so two operators racing on one entry cannot both win and a claim is taken
once: the approved action starts at most once, whatever restarts in between.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from skm_runtime.access import AccessCheck, Decision, HeldState, Hold, Outcome, Principal, Verdict
from skm_runtime.errors import FieldViolation, InvalidArgument
from svc_policy.checks import Checker, split_id, tenant_of
from svc_policy.errors import (
    BlockedActionAlreadyClaimed,
    BlockedActionAlreadyResolved,
    BlockedActionExpired,
    BlockedActionNotApproved,
    BlockedActionNotClaimed,
    BlockedActionNotFound,
    ClaimIdMismatch,
    ConstitutionTooLarge,
    CrossTenantRelationship,
    EtagMismatch,
    InvalidCheck,
    InvalidRelationship,
    InvalidResourceName,
    NotAnAdmin,
    NotAnOperator,
    PrincipalMissing,
    RequestIdReused,
    SelfApproval,
    TooManyRelationships,
    WildcardNotAllowed,
)
from svc_policy.model import BlockedAction, Constitution, Relationship
from svc_policy.ports import Authorizer, BlockedActionStore, ChangeFeed

MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_SUMMARY_CHARS = 300
MAX_RELATIONSHIPS = 100
MAX_CONSTITUTION_BYTES = 256 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Held actions whose decision belongs to an admin (can_administer) rather than to any
# operator (can_operate), by the reason they were held for: the model lets operators ask
# for privileged provisioning "with an admin's approval" (deploy/openfga/model.fga).
_ADMIN_APPROVES = frozenset({"PRIVILEGED_ACTION_NEEDS_APPROVAL"})
_RESOLVED_FOR_WATCHERS = {
    HeldState.APPROVED,
    HeldState.REJECTED,
    HeldState.EXPIRED,
    HeldState.CANCELLED,
}


class AuditTrail(Protocol):
    """Where every decision goes as an audit event (off the hot path)."""

    def decided(
        self, check: AccessCheck, decision: Decision, tenant: str, principal: Principal | None, latency_s: float
    ) -> None:
        """`latency_s`: how long deciding took here, in seconds."""
        ...


class ConstitutionStore(Protocol):
    async def get_constitution(self, tenant: str) -> Constitution | None: ...

    async def put_constitution(self, constitution: Constitution, expected_sha256: str) -> bool:
        """Store it only if the stored hash is still `expected_sha256` ("" = none stored)."""
        ...


def tenant_name(name: str, collection: str) -> tuple[str, str]:
    """Split "tenants/{t}/{collection}/{id}" into ("tenants/{t}", id)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or not parts[1] or parts[2] != collection or not parts[3]:
        raise InvalidResourceName(f"expected tenants/{{tenant}}/{collection}/{{id}}", metadata={"name": name[:200]})
    return f"tenants/{parts[1]}", parts[3]


def check_tenant(parent: str) -> str:
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != "tenants" or not parts[1]:
        raise InvalidResourceName("expected tenants/{tenant}", metadata={"name": parent[:200]})
    return parent


class Policy:
    """The policy service's use cases over its ports."""

    def __init__(
        self,
        checker: Checker,
        authorizer: Authorizer,
        store: BlockedActionStore,
        constitutions: ConstitutionStore,
        audit: AuditTrail,
        *,
        hold_ttl: timedelta,
        now: Callable[[], datetime],
        changes: ChangeFeed | None = None,
    ) -> None:
        self._checker = checker
        self._changes = changes
        self._authorizer = authorizer
        self._store = store
        self._constitutions = constitutions
        self._audit = audit
        self._hold_ttl = hold_ttl
        self._now = now

    # -- decisions -------------------------------------------------------------------

    async def check(
        self, check: AccessCheck, *, fresh: bool, hold: Hold | None, principal: Principal | None
    ) -> Decision:
        started = time.perf_counter()
        found = await self._checker.check(check, fresh=fresh)
        # Not dataclasses.replace: this runs for every check, and a plain construction is cheaper.
        decision = Decision(found.verdict, found.reason, _new_id(), found.blocked_action, found.cached)
        tenant = tenant_of(split_id(check.object, what="object", userset=False)[1], what="object")
        if hold is not None and decision.verdict is Verdict.REQUIRES_APPROVAL:
            decision = await self._hold(check, decision, hold, tenant, principal)
        self._audit.decided(check, decision, tenant, principal, time.perf_counter() - started)
        return decision

    async def check_many(
        self, checks: Sequence[AccessCheck], *, fresh: bool, principal: Principal | None
    ) -> list[Decision]:
        started = time.perf_counter()
        decisions = await self._checker.check_many(checks, fresh=fresh)
        latency = time.perf_counter() - started
        result = []
        for check, decision in zip(checks, decisions, strict=True):
            decision = dataclasses.replace(decision, decision_id=_new_id())
            tenant = tenant_of(split_id(check.object, what="object", userset=False)[1], what="object")
            self._audit.decided(check, decision, tenant, principal, latency)
            result.append(decision)
        return result

    async def _hold(
        self, check: AccessCheck, decision: Decision, hold: Hold, tenant: str, principal: Principal | None
    ) -> Decision:
        if principal is None or principal.tenant != tenant:
            raise PrincipalMissing("holding an action needs the principal it runs for, of the object's tenant")
        _validate_hold(hold, tenant)
        now = self._now()
        name = f"{tenant}/blockedActions/{_new_id()}"
        action = BlockedAction(
            name=name,
            request_id=hold.request_id,
            principal=principal,
            check=check,
            decision=dataclasses.replace(decision, blocked_action=name),
            payload=hold.payload,
            summary=hold.summary,
            session=hold.session,
            state=HeldState.PENDING,
            create_time=now,
            update_time=now,
            expire_time=now + self._hold_ttl,
        )
        stored = await self._store.hold(action)
        if stored.name != name and (stored.check != check or stored.payload != hold.payload):
            raise RequestIdReused(
                "this request_id was held before for another action", metadata={"request_id": hold.request_id}
            )
        return stored.decision

    # -- relationships ---------------------------------------------------------------

    async def write_relationships(self, parent: str, relationships: Sequence[Relationship]) -> None:
        tenant = check_tenant(parent)
        self._validate_relationships(tenant, relationships)
        await self._authorizer.write(relationships)
        await self._changed(tenant)

    async def delete_relationships(self, parent: str, relationships: Sequence[Relationship]) -> None:
        tenant = check_tenant(parent)
        self._validate_relationships(tenant, relationships)
        await self._authorizer.delete(relationships)
        await self._changed(tenant)

    async def _changed(self, tenant: str) -> None:
        # Own cache first, then everyone else's, all before the caller hears "done".
        self._checker.invalidate(tenant)
        if self._changes is not None:
            await self._changes.relationships_changed(tenant)

    async def read_relationships(
        self, parent: str, subject: str, relation: str, object_: str, page_size: int, page_token: str
    ) -> tuple[list[Relationship], str]:
        tenant = check_tenant(parent)
        object_type, _, object_id = object_.partition(":")
        if not object_type:
            raise InvalidRelationship("object is required: {type}:{id} or {type}:", metadata={"field": "object"})
        if object_id and tenant_of(object_id, what="object") != tenant:
            raise CrossTenantRelationship("the object belongs to another tenant")
        if subject:
            _, subject_id, _ = _relationship_id(subject, "subject", userset=True)
            if tenant_of(subject_id, what="subject") != tenant:
                raise CrossTenantRelationship("the subject belongs to another tenant")
        size = 100 if page_size <= 0 else min(page_size, 1000)
        found, token = await self._authorizer.read(subject, relation, object_, size, page_token)
        # "{type}:" reads every object of a type in the store; keep this tenant's only.
        mine = [r for r in found if _tenant_of_object(r.object) == tenant]
        return mine, token

    def _validate_relationships(self, tenant: str, relationships: Sequence[Relationship]) -> None:
        if not 1 <= len(relationships) <= MAX_RELATIONSHIPS:
            raise TooManyRelationships(
                f"1 to {MAX_RELATIONSHIPS} relationships per call",
                metadata={"count": str(len(relationships))},
            )
        for index, relationship in enumerate(relationships):
            for what, value, userset in (
                ("subject", relationship.subject, True),
                ("object", relationship.object, False),
            ):
                _, object_id, _ = _relationship_id(value, f"relationships[{index}].{what}", userset=userset)
                if tenant_of(object_id, what=what) != tenant:
                    raise CrossTenantRelationship(
                        f"relationships[{index}].{what} belongs to another tenant than {tenant}",
                        metadata={"index": str(index), "field": what},
                    )
            if not relationship.relation:
                raise InvalidRelationship("relation is required", metadata={"index": str(index)})

    # -- the requeue store -----------------------------------------------------------

    async def list_blocked(
        self, parent: str, states: Sequence[HeldState], session: str, page_size: int, page_token: str
    ) -> tuple[list[BlockedAction], str]:
        tenant = check_tenant(parent)
        size = 50 if page_size <= 0 else min(page_size, 1000)
        return await self._store.list_page(tenant, [s.value for s in states], session, size, page_token)

    async def get_blocked(self, name: str, principal: Principal | None = None) -> BlockedAction:
        tenant, _ = tenant_name(name, "blockedActions")
        if principal is not None and principal.tenant and principal.tenant != tenant:
            raise BlockedActionNotFound("no such blocked action", metadata={"name": name})
        action = await self._store.get(name)
        if action is None:
            raise BlockedActionNotFound("no such blocked action", metadata={"name": name})
        return await self._expire_if_due(action)

    async def approve(self, name: str, principal: Principal | None, note: str, etag: str) -> BlockedAction:
        return await self._decide(name, principal, note, etag, HeldState.APPROVED)

    async def reject(self, name: str, principal: Principal | None, note: str, etag: str) -> BlockedAction:
        return await self._decide(name, principal, note, etag, HeldState.REJECTED)

    async def _decide(
        self, name: str, principal: Principal | None, note: str, etag: str, to: HeldState
    ) -> BlockedAction:
        if principal is None or not principal.user:
            raise PrincipalMissing("deciding on a blocked action needs the operator's identity")
        action = await self.get_blocked(name, principal)
        await self._require_approver(principal, action, to)
        if action.state is HeldState.EXPIRED:
            raise BlockedActionExpired("the blocked action expired before a decision", metadata={"name": name})
        if action.state is not HeldState.PENDING:
            raise BlockedActionAlreadyResolved(
                "the blocked action was already decided", metadata={"name": name, "state": action.state.value}
            )
        if etag and etag != action.etag:
            raise EtagMismatch("the blocked action changed since it was read", metadata={"name": name})
        now = self._now()
        after = dataclasses.replace(
            action, state=to, update_time=now, resolve_time=now, resolver=principal.user, note=note[:2000]
        )
        if to is HeldState.APPROVED:
            # An approval waits for its claim as long as the entry waited for the approval,
            # so one given just before the entry's time was up can still be acted on.
            after = dataclasses.replace(after, expire_time=now + self._hold_ttl)
        if not await self._store.save_transition(action, after):
            # Someone else changed it first: report what it is now.
            return await self._decide(name, principal, note, etag or action.etag, to)
        return after

    async def _require_approver(self, principal: Principal, action: BlockedAction, to: HeldState) -> None:
        """Operators of the tenant decide on its blocked actions; an action held for an
        admin's approval (see _ADMIN_APPROVES) needs an admin. Nobody approves what they
        asked for themselves."""
        tenant = action.tenant
        relation, error = (
            ("can_administer", NotAnAdmin)
            if action.decision.reason in _ADMIN_APPROVES
            else ("can_operate", NotAnOperator)
        )
        try:
            decision = await self._checker.check(
                AccessCheck(f"user:{principal.user}", relation, f"tenant:{tenant}"), fresh=True
            )
        except InvalidCheck:
            decision = Decision(Verdict.DENY, "INVALID_PRINCIPAL")
        if decision.verdict is not Verdict.ALLOW:
            who = "admins" if error is NotAnAdmin else "operators"
            raise error(
                f"only {who} of the tenant may decide on this blocked action",
                metadata={"tenant": tenant, "reason": decision.reason, "held_for": action.decision.reason},
            )
        if to is HeldState.APPROVED and principal.user == action.principal.user:
            raise SelfApproval(
                "an action may not be approved by the user it was held for; another operator must decide",
                metadata={"name": action.name, "user": principal.user},
            )

    async def claim(self, name: str, claim_id: str) -> BlockedAction:
        if not claim_id:
            raise _invalid("claim_id", "required")
        action = await self.get_blocked(name)
        if action.state is HeldState.EXECUTING or action.state is HeldState.EXECUTED:
            if action.claim_id == claim_id:
                return action
            raise BlockedActionAlreadyClaimed("claimed by another executor", metadata={"name": name})
        if action.state is not HeldState.APPROVED:
            raise BlockedActionNotApproved(
                "only an approved action can be claimed", metadata={"name": name, "state": action.state.value}
            )
        after = dataclasses.replace(action, state=HeldState.EXECUTING, update_time=self._now(), claim_id=claim_id)
        if not await self._store.save_transition(action, after):
            return await self.claim(name, claim_id)
        return after

    async def complete(self, name: str, claim_id: str, outcome: Outcome) -> BlockedAction:
        action = await self.get_blocked(name)
        if action.state is HeldState.EXECUTED and action.claim_id == claim_id:
            return action
        if action.state is not HeldState.EXECUTING:
            raise BlockedActionNotClaimed(
                "only a claimed action can be completed", metadata={"name": name, "state": action.state.value}
            )
        if action.claim_id != claim_id:
            raise ClaimIdMismatch("the action was claimed with another claim_id", metadata={"name": name})
        after = dataclasses.replace(action, state=HeldState.EXECUTED, update_time=self._now(), outcome=outcome)
        if not await self._store.save_transition(action, after):
            return await self.complete(name, claim_id, outcome)
        return after

    async def cancel(self, name: str) -> BlockedAction:
        action = await self.get_blocked(name)
        if action.state is HeldState.CANCELLED:
            return action
        if action.state not in (HeldState.PENDING, HeldState.APPROVED):
            raise BlockedActionAlreadyResolved(
                "the blocked action can no longer be cancelled",
                metadata={"name": name, "state": action.state.value},
            )
        now = self._now()
        after = dataclasses.replace(action, state=HeldState.CANCELLED, update_time=now, resolve_time=now)
        if not await self._store.save_transition(action, after):
            return await self.cancel(name)
        return after

    async def watch(self, parent: str, names: Sequence[str]) -> AsyncGenerator[BlockedAction, None]:
        """Entries as they leave PENDING; named ones already resolved come first."""
        tenant = check_tenant(parent)
        for name in names:
            if tenant_name(name, "blockedActions")[0] != tenant:
                raise BlockedActionNotFound("no such blocked action in this tenant", metadata={"name": name})
        # Subscribe before reading the current states, so no change slips in between.
        async with self._store.watch(list(names) or [f"{tenant}/*"]) as feed:
            sent: set[str] = set()
            for name in names:
                action = await self.get_blocked(name)
                if action.state is not HeldState.PENDING:
                    sent.add(action.name)
                    yield action
            async for action in feed:
                if action.name in sent or action.state not in _RESOLVED_FOR_WATCHERS:
                    continue
                sent.add(action.name)
                yield action

    async def expire_due(self, limit: int = 500) -> int:
        """Move every PENDING or APPROVED entry whose time is up to EXPIRED."""
        count = 0
        for action in await self._store.expiring(self._now(), limit):
            if (await self._expire_if_due(action)).state is HeldState.EXPIRED:
                count += 1
        return count

    async def _expire_if_due(self, action: BlockedAction) -> BlockedAction:
        now = self._now()
        if action.state not in (HeldState.PENDING, HeldState.APPROVED) or action.expire_time > now:
            return action
        after = dataclasses.replace(action, state=HeldState.EXPIRED, update_time=now, resolve_time=now)
        if await self._store.save_transition(action, after):
            return after
        fresh = await self._store.get(action.name)
        return fresh or action

    # -- constitutions ---------------------------------------------------------------

    async def get_constitution(self, name: str) -> Constitution:
        tenant = _constitution_tenant(name)
        stored = await self._constitutions.get_constitution(tenant)
        return stored or Constitution(tenant, "", EMPTY_SHA256)

    async def update_constitution(
        self, name: str, content: str, etag: str, principal: Principal | None
    ) -> Constitution:
        tenant = _constitution_tenant(name)
        size = len(content.encode())
        if size > MAX_CONSTITUTION_BYTES:
            raise ConstitutionTooLarge(
                "the constitution is too large", metadata={"limit_bytes": str(MAX_CONSTITUTION_BYTES)}
            )
        current = await self.get_constitution(name)
        expected = "" if current.update_time is None else current.sha256
        if etag != ("" if current.update_time is None else current.etag):
            raise EtagMismatch("the constitution changed since it was read", metadata={"name": name})
        updated = Constitution(
            tenant,
            content,
            hashlib.sha256(content.encode()).hexdigest(),
            self._now(),
            principal.user if principal is not None else "",
        )
        if not await self._constitutions.put_constitution(updated, expected):
            raise EtagMismatch("the constitution changed since it was read", metadata={"name": name})
        return updated


def _constitution_tenant(name: str) -> str:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "tenants" or not parts[1] or parts[2] != "constitution":
        raise InvalidResourceName("expected tenants/{tenant}/constitution", metadata={"name": name[:200]})
    return f"tenants/{parts[1]}"


def _relationship_id(value: str, what: str, *, userset: bool) -> tuple[str, str, str]:
    if "*" in value:
        raise WildcardNotAllowed(f"{what}: wildcards would reach across tenants", metadata={"field": what})
    try:
        return split_id(value, what=what, userset=userset)
    except InvalidCheck as exc:
        raise InvalidRelationship(exc.message, metadata=exc.metadata) from None


def _tenant_of_object(value: str) -> str:
    parts = value.partition(":")[2].split("/")
    return f"tenants/{parts[1]}" if len(parts) > 1 and parts[0] == "tenants" else ""


def _invalid(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {problem}", violations=[FieldViolation(field, problem)])


def _validate_hold(hold: Hold, tenant: str) -> None:
    if not hold.request_id:
        raise _invalid("hold.request_id", "required")
    if not hold.payload.type_url:
        raise _invalid("hold.payload", "required: the held request, as a protobuf Any that names its type")
    if len(hold.payload.value) > MAX_PAYLOAD_BYTES:
        raise _invalid("hold.payload", "larger than 1 MiB")
    if len(hold.summary) > MAX_SUMMARY_CHARS:
        raise _invalid("hold.summary", "longer than 300 characters")
    if hold.session and tenant_name(hold.session, "sessions")[0] != tenant:
        raise _invalid("hold.session", "belongs to another tenant")


def _new_id() -> str:
    return str(uuid.uuid4())
