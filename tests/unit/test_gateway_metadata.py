"""What the gateway passes on of a client's metadata: its own headers, never the mesh's."""

from __future__ import annotations

import time
from typing import Any

from skm_runtime.contract import methods
from skm_runtime.principal import FORWARDED_BY_KEY, PRINCIPAL_KEY, PRINCIPAL_MAC_KEY, principal_from
from svc_gateway.core import Gateway
from svc_gateway.model import Admission
from svc_gateway.proxy import Proxy, _rule
from tests.unit.test_gateway_caches import DIGEST, _Constitutions, _keys, _Limiter, _Policy, _token, _verifier

GET_SESSION = "/skm.conversation.v1.ConversationService/GetSession"


class _Context:
    def __init__(self, metadata: list[tuple[str, str | bytes]]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None


async def test_the_mesh_metadata_a_client_sends_is_dropped() -> None:
    pem, jwks = _keys()
    gateway = Gateway(_verifier(jwks), _Constitutions(DIGEST), _Limiter(), _Policy(Admission(True, "SESSION_OWNER")))
    proxy = Proxy(gateway, methods(), {}, stream_timeout=60)
    method = methods()[GET_SESSION]
    request = method.request_type(name="tenants/t1/sessions/s1").SerializeToString()
    sent: list[tuple[str, Any]] = [
        ("authorization", f"Bearer {_token(pem, exp=time.time() + 600)}"),
        ("x-client-note", "kept"),
        (PRINCIPAL_KEY, b"forged"),
        (PRINCIPAL_MAC_KEY, b"forged"),
        (FORWARDED_BY_KEY, "conversation"),
        ("x-skm-conversation-routed", "1"),
        ("x-skm-anything-new", "x"),
    ]
    passed = await proxy._admit(method, _rule(method), _Context(sent), request)  # type: ignore[arg-type]
    keys = [key for key, _ in passed]
    assert ("x-client-note", "kept") in passed
    assert "x-skm-conversation-routed" not in keys
    assert "x-skm-anything-new" not in keys
    assert keys.count(PRINCIPAL_KEY) == 1, "only the gateway's own principal header"
    assert keys.count(PRINCIPAL_MAC_KEY) == 1, "only the gateway's own MAC"
    assert principal_from(passed) is not None, "the gateway's principal verifies"
    assert dict(passed)[FORWARDED_BY_KEY] == "gateway"
