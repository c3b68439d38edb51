"""Why a public call was refused at admission (skm_runtime.admission).

Reasons are skm.gateway.v1.ErrorReason names without prefix, in the domain `gateway.skm`:
the public entry's refusals keep the domain and reasons clients already handle, whichever
service now runs the admission (the one that owns the method).
"""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError


class AdmissionError(SkmError):
    domain = "gateway.skm"


class TokenMissing(AdmissionError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_MISSING"


class TokenInvalid(AdmissionError):
    """Not a well-formed signed JWT."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class TokenAlgorithmNotAllowed(AdmissionError):
    """The header names an algorithm outside the pinned list, or not its key's."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_ALGORITHM_NOT_ALLOWED"


class TokenSignatureInvalid(AdmissionError):
    """The signature does not verify with the named key, or no key of ours is named."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_SIGNATURE_INVALID"


class TokenExpired(AdmissionError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(AdmissionError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_NOT_YET_VALID"


class TokenWrongIssuer(AdmissionError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_WRONG_ISSUER"


class TokenWrongAudience(AdmissionError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_WRONG_AUDIENCE"


class TokenClaimMissing(AdmissionError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_CLAIM_MISSING"


class TokenClaimInvalid(AdmissionError):
    """A claim is there but of the wrong type or form (a string `exp`, a numeric `sub`)."""

    code = Code.UNAUTHENTICATED
    reason = "TOKEN_CLAIM_INVALID"


class ConstitutionHashStale(AdmissionError):
    code = Code.FAILED_PRECONDITION
    reason = "CONSTITUTION_HASH_STALE"


class MethodNotPublic(AdmissionError):
    code = Code.UNIMPLEMENTED
    reason = "METHOD_NOT_PUBLIC"


class MessageTooLarge(AdmissionError):
    """A message over the public limit (INVALID_ARGUMENT, as other too-large input is)."""

    code = Code.INVALID_ARGUMENT
    reason = "MESSAGE_TOO_LARGE"


class ResourceNameInvalid(AdmissionError):
    code = Code.INVALID_ARGUMENT
    reason = "RESOURCE_NAME_INVALID"


class CrossTenantResource(AdmissionError):
    code = Code.PERMISSION_DENIED
    reason = "CROSS_TENANT_RESOURCE"


class PermissionDenied(AdmissionError):
    code = Code.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class RateLimited(AdmissionError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class PolicyUnavailable(AdmissionError):
    code = Code.UNAVAILABLE
    reason = "POLICY_UNAVAILABLE"


class ServiceUnavailable(AdmissionError):
    code = Code.UNAVAILABLE
    reason = "SERVICE_UNAVAILABLE"
