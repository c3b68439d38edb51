"""svc_policy's domain errors; reasons are skm.policy.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError

DOMAIN = "policy.skm"


class PolicyError(SkmError):
    domain = DOMAIN


class InvalidCheck(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_CHECK"


class TooManyChecks(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "TOO_MANY_CHECKS"


class InvalidRelationship(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RELATIONSHIP"


class WildcardNotAllowed(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "WILDCARD_NOT_ALLOWED"


class TooManyRelationships(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "TOO_MANY_RELATIONSHIPS"


class CrossTenantRelationship(PolicyError):
    code = Code.PERMISSION_DENIED
    reason = "CROSS_TENANT_RELATIONSHIP"


class PolicyBackendUnavailable(PolicyError):
    """OpenFGA cannot be reached: every check fails closed with this."""

    code = Code.UNAVAILABLE
    reason = "POLICY_BACKEND_UNAVAILABLE"


class InvalidResourceName(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RESOURCE_NAME"


class InvalidPageToken(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PAGE_TOKEN"


class RequestIdReused(PolicyError):
    """The same request_id was held before with a different check or payload."""

    code = Code.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"


class BlockedActionNotFound(PolicyError):
    code = Code.NOT_FOUND
    reason = "BLOCKED_ACTION_NOT_FOUND"


class BlockedActionExpired(PolicyError):
    code = Code.FAILED_PRECONDITION
    reason = "BLOCKED_ACTION_EXPIRED"


class BlockedActionAlreadyResolved(PolicyError):
    code = Code.FAILED_PRECONDITION
    reason = "BLOCKED_ACTION_ALREADY_RESOLVED"


class BlockedActionNotApproved(PolicyError):
    code = Code.FAILED_PRECONDITION
    reason = "BLOCKED_ACTION_NOT_APPROVED"


class BlockedActionAlreadyClaimed(PolicyError):
    code = Code.FAILED_PRECONDITION
    reason = "BLOCKED_ACTION_ALREADY_CLAIMED"


class BlockedActionNotClaimed(PolicyError):
    code = Code.FAILED_PRECONDITION
    reason = "BLOCKED_ACTION_NOT_CLAIMED"


class ClaimIdMismatch(PolicyError):
    code = Code.FAILED_PRECONDITION
    reason = "CLAIM_ID_MISMATCH"


class EtagMismatch(PolicyError):
    code = Code.ABORTED
    reason = "ETAG_MISMATCH"


class ConstitutionTooLarge(PolicyError):
    code = Code.INVALID_ARGUMENT
    reason = "CONSTITUTION_TOO_LARGE"


class NotAnOperator(PolicyError):
    """The caller may not decide on blocked actions of this tenant."""

    code = Code.PERMISSION_DENIED
    reason = "NOT_AN_OPERATOR"


class NotAnAdmin(PolicyError):
    """The blocked action waits for an admin's approval; the caller is not an admin."""

    code = Code.PERMISSION_DENIED
    reason = "NOT_AN_ADMIN"


class SelfApproval(PolicyError):
    """The caller asked for the blocked action itself and may not approve it."""

    code = Code.PERMISSION_DENIED
    reason = "SELF_APPROVAL"


class PrincipalMissing(PolicyError):
    code = Code.UNAUTHENTICATED
    reason = "PRINCIPAL_MISSING"
