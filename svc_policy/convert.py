"""Between svc_policy's domain and its wire types (skm.policy.v1, skm.type.v1, skm.events.v1)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import lru_cache

from google.protobuf import any_pb2, json_format, struct_pb2, timestamp_pb2

from skm.events.v1 import event_pb2
from skm.policy.v1 import access_pb2, blocked_action_pb2
from skm.type.v1 import policy_decision_pb2, principal_pb2
from skm_runtime.access import AccessCheck, Decision, HeldState, JsonObject, Outcome, Payload, Principal, Verdict
from skm_runtime.errors import FieldViolation, InvalidArgument
from skm_runtime.principal import principal_message, role_names
from svc_policy.model import BlockedAction, Condition, Relationship

SOURCE = "policy"


def context_of(message: struct_pb2.Struct) -> JsonObject:
    # Most checks carry no context: skip the (slow) generic conversion for them.
    return json_format.MessageToDict(message) if message.fields else {}


def struct_of(context: JsonObject) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if context:
        message.update(dict(context))
    return message


def check_of(message: access_pb2.AccessCheck) -> AccessCheck:
    return AccessCheck(message.subject, message.relation, message.object, context_of(message.context))


def check_to(check: AccessCheck) -> access_pb2.AccessCheck:
    return access_pb2.AccessCheck(
        subject=check.subject, relation=check.relation, object=check.object, context=struct_of(check.context)
    )


def relationship_of(message: access_pb2.Relationship) -> Relationship:
    condition = None
    if message.HasField("condition") and message.condition.name:
        condition = Condition(message.condition.name, context_of(message.condition.context))
    return Relationship(message.subject, message.relation, message.object, condition)


def relationship_to(relationship: Relationship) -> access_pb2.Relationship:
    message = access_pb2.Relationship(
        subject=relationship.subject, relation=relationship.relation, object=relationship.object
    )
    if relationship.condition is not None:
        message.condition.name = relationship.condition.name
        message.condition.context.CopyFrom(struct_of(relationship.condition.context))
    return message


_VERDICTS = {verdict: policy_decision_pb2.Verdict.Value(f"VERDICT_{verdict.value}") for verdict in Verdict}


def decision_to(decision: Decision) -> policy_decision_pb2.PolicyDecision:
    return policy_decision_pb2.PolicyDecision(
        verdict=_VERDICTS[decision.verdict],
        reason=decision.reason,
        decision_id=decision.decision_id,
        blocked_action=decision.blocked_action,
    )


def decision_of(message: policy_decision_pb2.PolicyDecision) -> Decision:
    verdict = policy_decision_pb2.Verdict.Name(message.verdict).removeprefix("VERDICT_")
    return Decision(Verdict(verdict), message.reason, message.decision_id, message.blocked_action)


def principal_of(message: principal_pb2.Principal) -> Principal:
    return Principal(message.tenant, message.user, role_names(message))


def principal_to(principal: Principal) -> principal_pb2.Principal:
    return principal_message(principal.tenant, principal.user, principal.roles)


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def state_to(state: HeldState) -> blocked_action_pb2.BlockedAction.State.ValueType:
    return blocked_action_pb2.BlockedAction.State.Value(f"STATE_{state.value}")


def state_of(value: int) -> HeldState:
    """A blocked action's state from the wire; an unknown or unspecified one is the
    caller's mistake (a list filter naming no state), never an internal error."""
    try:
        name = blocked_action_pb2.BlockedAction.State.Name(value)  # type: ignore[arg-type]  # any wire int
        return HeldState(name.removeprefix("STATE_"))
    except ValueError:
        problem = f"{value} is not a state of a blocked action"
        raise InvalidArgument(f"states: {problem}", violations=[FieldViolation("states", problem)]) from None


def blocked_action_to(action: BlockedAction) -> blocked_action_pb2.BlockedAction:
    message = blocked_action_pb2.BlockedAction(
        name=action.name,
        principal=principal_to(action.principal),
        check=check_to(action.check),
        decision=decision_to(action.decision),
        payload=any_pb2.Any(type_url=action.payload.type_url, value=action.payload.value),
        summary=action.summary,
        session=action.session,
        state=state_to(action.state),
        create_time=_timestamp(action.create_time),
        update_time=_timestamp(action.update_time),
        expire_time=_timestamp(action.expire_time),
        resolve_time=_timestamp(action.resolve_time),
        resolver=action.resolver,
        note=action.note,
        claim_id=action.claim_id,
        etag=action.etag,
    )
    if action.outcome is not None:
        message.outcome.succeeded = action.outcome.succeeded
        message.outcome.failure_reason = action.outcome.failure_reason
    return message


def payload_of(message: any_pb2.Any) -> Payload:
    return Payload(message.type_url, message.value)


def outcome_of(succeeded: bool, failure_reason: str) -> Outcome:
    return Outcome(succeeded, failure_reason)


def _envelope(tenant: str, session: str, principal: Principal | None, trace_id: str) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()),
        tenant=tenant,
        session=session,
        trace_id=trace_id,
        source=SOURCE,
    )
    event.event_time.GetCurrentTime()
    if principal is not None:
        event.principal.CopyFrom(principal_to(principal))
    return event


def blocked_event(action: BlockedAction, previous: HeldState | None, *, trace_id: str = "") -> event_pb2.Event:
    """ActionBlocked for a new hold, ActionResolved for every later state change."""
    event = _envelope(action.tenant, action.session, action.principal, trace_id)
    if previous is None:
        event.action_blocked.blocked_action.CopyFrom(blocked_action_to(action))
    else:
        event.action_resolved.blocked_action.CopyFrom(blocked_action_to(action))
        event.action_resolved.previous_state = state_to(previous)
    return event


def decision_event(
    check: AccessCheck,
    decision: Decision,
    tenant: str,
    principal: Principal | None,
    *,
    cached: bool,
    trace_id: str = "",
    time_ns: int | None = None,
    latency_s: float | None = None,
) -> event_pb2.Event:
    """PolicyDecided, at `time_ns` (nanoseconds since the epoch; now if None).

    Built for every decision, so fields are set in place rather than through copies of
    intermediate messages."""
    event = event_pb2.Event(event_id=str(uuid.uuid4()), tenant=tenant, trace_id=trace_id, source=SOURCE)
    if time_ns is None:
        event.event_time.GetCurrentTime()
    else:
        event.event_time.seconds, event.event_time.nanos = divmod(time_ns, 1_000_000_000)
    if principal is not None:
        event.principal.CopyFrom(_principal_wire(principal))
    decided = event.policy_decided
    decided.check.subject = check.subject
    decided.check.relation = check.relation
    decided.check.object = check.object
    decided.check.context.SetInParent()  # present even when empty, as check_to makes it
    if check.context:
        decided.check.context.update(dict(check.context))
    decided.decision.verdict = _VERDICTS[decision.verdict]
    decided.decision.reason = decision.reason
    decided.decision.decision_id = decision.decision_id
    decided.decision.blocked_action = decision.blocked_action
    decided.cached = cached
    if latency_s is not None:
        nanos = round(latency_s * 1_000_000_000)
        decided.latency.seconds, decided.latency.nanos = divmod(nanos, 1_000_000_000)
    return event


@lru_cache(maxsize=4096)
def _principal_wire(principal: Principal) -> principal_pb2.Principal:
    # Only ever copied from, never changed.
    return principal_to(principal)


def _datetime(stamp: timestamp_pb2.Timestamp, present: bool = True) -> datetime | None:
    if not present:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def blocked_action_of(message: blocked_action_pb2.BlockedAction, request_id: str) -> BlockedAction:
    create = _datetime(message.create_time)
    update = _datetime(message.update_time)
    expire = _datetime(message.expire_time)
    if create is None or update is None or expire is None:
        raise ValueError("a stored blocked action lacks its times")
    return BlockedAction(
        name=message.name,
        request_id=request_id,
        principal=principal_of(message.principal),
        check=check_of(message.check),
        decision=decision_of(message.decision),
        payload=payload_of(message.payload),
        summary=message.summary,
        session=message.session,
        state=state_of(message.state),
        create_time=create,
        update_time=update,
        expire_time=expire,
        resolve_time=_datetime(message.resolve_time, message.HasField("resolve_time")),
        resolver=message.resolver,
        note=message.note,
        claim_id=message.claim_id,
        outcome=outcome_of(message.outcome.succeeded, message.outcome.failure_reason)
        if message.HasField("outcome")
        else None,
    )
