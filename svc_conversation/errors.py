"""svc_conversation's domain errors; reasons are skm.conversation.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError
from svc_conversation.model import CallStats

DOMAIN = "conversation.skm"


class ConversationError(SkmError):
    domain = DOMAIN


class InvalidResourceName(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RESOURCE_NAME"


class InvalidPageToken(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PAGE_TOKEN"


class InvalidUpdateMask(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_UPDATE_MASK"


class RequestIdReused(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"


class EtagMismatch(ConversationError):
    code = Code.ABORTED
    reason = "ETAG_MISMATCH"


class SessionNotFound(ConversationError):
    code = Code.NOT_FOUND
    reason = "SESSION_NOT_FOUND"


class InvalidSession(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_SESSION"


class PersonaNotFound(ConversationError):
    code = Code.NOT_FOUND
    reason = "PERSONA_NOT_FOUND"


class PersonaNotSigned(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "PERSONA_NOT_SIGNED"


class TurnNotFound(ConversationError):
    code = Code.NOT_FOUND
    reason = "TURN_NOT_FOUND"


class MessageEmpty(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "MESSAGE_EMPTY"


class MessageTooLong(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "MESSAGE_TOO_LONG"


class TurnInProgress(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "TURN_IN_PROGRESS"


class TurnNotActive(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "TURN_NOT_ACTIVE"


class TurnNotInterrupted(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "TURN_NOT_INTERRUPTED"


class TurnNotResumable(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "TURN_NOT_RESUMABLE"


class TurnAwaitingApproval(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "TURN_AWAITING_APPROVAL"


class NoLargerModel(ConversationError):
    code = Code.FAILED_PRECONDITION
    reason = "NO_LARGER_MODEL"


class FirstMessageNotConfig(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "FIRST_MESSAGE_NOT_CONFIG"


class UnexpectedConfig(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "UNEXPECTED_CONFIG"


class SessionMismatch(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "SESSION_MISMATCH"


class SequenceOutOfRange(ConversationError):
    code = Code.OUT_OF_RANGE
    reason = "SEQUENCE_OUT_OF_RANGE"


class DependencyUnavailable(ConversationError):
    code = Code.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"


class InvalidToolChoice(ConversationError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_TOOL_CHOICE"


class PrincipalMissing(ConversationError):
    """The call carries no principal the mesh signed."""

    code = Code.UNAUTHENTICATED
    reason = "PRINCIPAL_MISSING"


class PermissionDenied(ConversationError):
    code = Code.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class TurnOwnerUnreachable(ConversationError):
    """The turn runs in another process (its lease is live) that cannot be reached."""

    code = Code.UNAVAILABLE
    reason = "TURN_OWNER_UNREACHABLE"


class TurnOwnerChanged(ConversationError):
    """A forwarded intervention reached a process that no longer runs the turn."""

    code = Code.ABORTED
    reason = "TURN_OWNER_CHANGED"


class EmptyCommand(ConversationError):
    """A Converse message after the first that carries no command."""

    code = Code.INVALID_ARGUMENT
    reason = "EMPTY_COMMAND"


class OwnerRefused(ConversationError):
    """The error the process that runs the turn answered a forwarded intervention with,
    passed on to the caller as it came (code, reason, domain, message, metadata)."""

    def __init__(self, code: Code, reason: str, domain: str, message: str, metadata: dict[str, str]) -> None:
        super().__init__(message, metadata=metadata)
        self.code = code
        self.reason = reason
        self.domain = domain


# -- raised by ports, handled by the core (never sent as they are) ------------------------


class SessionGone(Exception):
    """The session was deleted while a write for it was under way."""


class ModelCallFailed(Exception):
    """A model call did not produce a usable answer; ``reason`` says why and ``stats``
    what the call consumed until then."""

    def __init__(self, reason: str, detail: str, stats: CallStats) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stats = stats


class ToolCallRejected(Exception):
    """svc_tools refused the call outright (bad arguments, unknown tool...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class StreamClosed(Exception):
    """The stream ended on the server's side: DELETED, SHUTDOWN, OVERFLOW, or the live
    events could not be followed (GAP, UNAVAILABLE)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
