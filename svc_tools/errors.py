"""svc_tools's domain errors; reasons are skm.tools.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError

DOMAIN = "tools.skm"


class ToolsError(SkmError):
    domain = DOMAIN


class InvalidResourceName(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RESOURCE_NAME"


class InvalidPageToken(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PAGE_TOKEN"


class ToolNotFound(ToolsError):
    code = Code.NOT_FOUND
    reason = "TOOL_NOT_FOUND"


class ToolNotExecutable(ToolsError):
    """A conversation-side tool: the agent loop runs it, not svc_tools."""

    code = Code.FAILED_PRECONDITION
    reason = "TOOL_NOT_EXECUTABLE"


class ArgumentsInvalid(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "ARGUMENTS_INVALID"


class ArgumentsTooLarge(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "ARGUMENTS_TOO_LARGE"


class RequestIdReused(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"


class ExecutionNotFound(ToolsError):
    code = Code.NOT_FOUND
    reason = "EXECUTION_NOT_FOUND"


class ExecutionFinished(ToolsError):
    code = Code.FAILED_PRECONDITION
    reason = "EXECUTION_FINISHED"


class PolicyUnavailable(ToolsError):
    """svc_policy cannot be reached (or failed): the check fails closed, nothing runs."""

    code = Code.UNAVAILABLE
    reason = "POLICY_UNAVAILABLE"


class PrincipalMissing(ToolsError):
    code = Code.UNAUTHENTICATED
    reason = "PRINCIPAL_MISSING"


class DocumentNotFound(ToolsError):
    code = Code.NOT_FOUND
    reason = "DOCUMENT_NOT_FOUND"


class DocumentTooLarge(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "DOCUMENT_TOO_LARGE"


class UnsupportedMimeType(ToolsError):
    code = Code.INVALID_ARGUMENT
    reason = "UNSUPPORTED_MIME_TYPE"


class EmbeddingUnavailable(ToolsError):
    """The embedding model cannot be reached (or answered nonsense); nothing was stored."""

    code = Code.UNAVAILABLE
    reason = "EMBEDDING_UNAVAILABLE"
