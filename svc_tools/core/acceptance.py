"""An ExecuteTool request checked and turned into the execution it asks for.

Everything is checked here, before anything is stored or run: the principal, the tool (of
the caller's tenant, run by this service), the names, the timeout and the arguments. The
fingerprint covers everything that makes the request what it is, so that a request_id
reused for another request is told apart from a retry of the same one.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation, InvalidArgument
from svc_tools.core.arguments import ArgumentSchemas
from svc_tools.core.listing import Catalogue
from svc_tools.core.names import id_in, split_name, turn_ids
from svc_tools.errors import PrincipalMissing, ToolNotExecutable, ToolNotFound
from svc_tools.model import ExecuteRequest, Execution, ExecutionSide, ExecutionState

MAX_TOOL_CALL_ID_CHARS = 200


def accept_request(
    request: ExecuteRequest,
    principal: Principal | None,
    *,
    catalogue: Catalogue,
    schemas: ArgumentSchemas,
    max_timeout_seconds: float,
    now: datetime,
    trusted_context: bool,
    trace_id: str = "",
) -> Execution:
    """The CHECKING execution `request` asks for; raises the first problem found.

    `trusted_context`: the call came from inside the mesh, so its policy_context is kept
    (facts for policy conditions are never taken from a caller outside).
    """
    tenant, tool_id = split_name(request.tool, "tools")
    if principal is None or not principal.tenant or not principal.user.startswith(f"{principal.tenant}/users/"):
        raise PrincipalMissing("running a tool needs the principal it runs for")
    tool = catalogue.find(tool_id)
    if tool is None or principal.tenant != tenant:
        # Another tenant's tools do not exist for this caller.
        raise ToolNotFound("no such tool", metadata={"tool": request.tool[:200]})
    if tool.side is ExecutionSide.CONVERSATION:
        raise ToolNotExecutable(
            "this tool is handled by the conversation, not by the tool service", metadata={"tool": tool.id}
        )
    violations: list[FieldViolation] = []
    try:
        uuid.UUID(request.request_id)
    except ValueError:
        violations.append(FieldViolation("request_id", "required: a UUID"))
    if request.persona and id_in(request.persona, tenant, "personas") is None:
        violations.append(
            FieldViolation("persona", "expected tenants/{tenant}/personas/{persona} of the tool's tenant")
        )
    if request.turn and turn_ids(request.turn, tenant) is None:
        violations.append(
            FieldViolation("turn", "expected tenants/{tenant}/sessions/{session}/turns/{turn} of the tool's tenant")
        )
    if len(request.tool_call_id) > MAX_TOOL_CALL_ID_CHARS:
        violations.append(FieldViolation("tool_call_id", f"longer than {MAX_TOOL_CALL_ID_CHARS} characters"))
    timeout = tool.default_timeout_seconds if request.timeout_seconds is None else request.timeout_seconds
    if timeout <= 0:
        violations.append(FieldViolation("timeout", "must be positive"))
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations=violations)
    schemas.check(tool, request.arguments_json)
    context = dict(request.policy_context) if trusted_context else {}
    timeout = min(timeout, max_timeout_seconds)
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                request.tool,
                request.arguments_json,
                request.persona,
                request.turn,
                request.tool_call_id,
                timeout,
                context,
                principal.user,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    return Execution(
        name=f"{tenant}/executions/{uuid.uuid4()}",
        tool=request.tool,
        arguments_json=request.arguments_json,
        principal=principal,
        request_id=request.request_id,
        fingerprint=fingerprint,
        state=ExecutionState.CHECKING,
        create_time=now,
        persona=request.persona,
        turn=request.turn,
        tool_call_id=request.tool_call_id,
        timeout_seconds=timeout,
        policy_context=context,
        trace_id=trace_id,
    )
