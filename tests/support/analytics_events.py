"""Real skm.events.v1.Event messages for the analytics tests, serialized as the platform's
relays publish them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from skm.events.v1 import event_pb2
from skm.type.v1 import model_pb2


def model_call(
    tenant: str = "tenants/t1",
    *,
    event_id: str | None = None,
    at: datetime | None = None,
    model: str = "models/m1",
    cost_nanos: int = 1_000,
    input_tokens: int = 100,
    output_tokens: int = 20,
    turn: str | None = None,
    role: model_pb2.ModelRole.ValueType = model_pb2.MODEL_ROLE_PRIMARY,
    tier: int = 0,
    failure: str = "",
) -> bytes:
    """A ModelCallCompleted; `turn` None: the tenant's turn 1, "" none."""
    event = event_pb2.Event(
        event_id=event_id or str(uuid.uuid4()),
        tenant=tenant,
        session=f"{tenant}/sessions/s1",
        source="conversation",
    )
    event.event_time.FromDatetime(at or datetime.now(UTC))
    call = event.model_call_completed
    call.turn = f"{tenant}/sessions/s1/turns/1" if turn is None else turn
    call.persona = f"{tenant}/personas/helper"
    call.failure_reason = failure
    usage = call.usage
    usage.model = model
    usage.role = role
    usage.tier = tier
    usage.input_tokens = input_tokens
    usage.output_tokens = output_tokens
    usage.time_to_first_token.FromMilliseconds(300)
    usage.duration.FromMilliseconds(1300)
    usage.tokens_per_second = output_tokens / 1.0
    usage.cost.currency_code = "USD"
    usage.cost.nanos = cost_nanos
    return event.SerializeToString()


def turn_started(tenant: str = "tenants/t1", *, event_id: str | None = None) -> bytes:
    event = event_pb2.Event(
        event_id=event_id or str(uuid.uuid4()), tenant=tenant, session=f"{tenant}/sessions/s1", source="conversation"
    )
    event.event_time.FromDatetime(datetime.now(UTC))
    event.turn_started.turn.name = f"{tenant}/sessions/s1/turns/1"
    event.turn_started.persona = f"{tenant}/personas/helper"
    return event.SerializeToString()


def event_id_of(value: bytes) -> str:
    event = event_pb2.Event()
    event.ParseFromString(value)
    return event.event_id
