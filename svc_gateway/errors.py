"""svc_gateway's errors; reasons are skm.gateway.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError


class GatewayError(SkmError):
    domain = "gateway.skm"


class TokenMissing(GatewayError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_MISSING"


class TokenInvalid(GatewayError):
    """Not a well-formed signed JWT."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class TokenAlgorithmNotAllowed(GatewayError):
    """The header names an algorithm outside the pinned list, or not its key's."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_ALGORITHM_NOT_ALLOWED"


class TokenSignatureInvalid(GatewayError):
    """The signature does not verify with the named key, or no key of ours is named."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_SIGNATURE_INVALID"


class TokenExpired(GatewayError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(GatewayError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_NOT_YET_VALID"


class TokenWrongIssuer(GatewayError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_WRONG_ISSUER"


class TokenWrongAudience(GatewayError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_WRONG_AUDIENCE"


class TokenClaimMissing(GatewayError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_CLAIM_MISSING"


class TokenClaimInvalid(GatewayError):
    """A claim is there but of the wrong type or form (a string `exp`, a numeric `sub`)."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_CLAIM_INVALID"


class ConstitutionHashStale(GatewayError):
    code = Code.FAILED_PRECONDITION
    reason = "CONSTITUTION_HASH_STALE"


class MethodNotPublic(GatewayError):
    code = Code.UNIMPLEMENTED
    reason = "METHOD_NOT_PUBLIC"


class MessageTooLarge(GatewayError):
    """A message over the public limit (INVALID_ARGUMENT, as other too-large input is)."""

    code = Code.INVALID_ARGUMENT
    reason = "MESSAGE_TOO_LARGE"


class ResourceNameInvalid(GatewayError):
    code = Code.INVALID_ARGUMENT
    reason = "RESOURCE_NAME_INVALID"


class CrossTenantResource(GatewayError):
    code = Code.PERMISSION_DENIED
    reason = "CROSS_TENANT_RESOURCE"


class PermissionDenied(GatewayError):
    code = Code.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class RateLimited(GatewayError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class PolicyUnavailable(GatewayError):
    code = Code.UNAVAILABLE
    reason = "POLICY_UNAVAILABLE"


class ServiceUnavailable(GatewayError):
    code = Code.UNAVAILABLE
    reason = "SERVICE_UNAVAILABLE"
