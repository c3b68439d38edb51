"""svc_profiles's domain errors; reasons are skm.profiles.v1.ErrorReason names without prefix."""

from __future__ import annotations

from skm_runtime.errors import Code, SkmError

DOMAIN = "profiles.skm"


class ProfilesError(SkmError):
    domain = DOMAIN


class InvalidResourceName(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_RESOURCE_NAME"


class InvalidPageToken(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PAGE_TOKEN"


class InvalidUpdateMask(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_UPDATE_MASK"


class RequestIdReused(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"


class EtagMismatch(ProfilesError):
    code = Code.ABORTED
    reason = "ETAG_MISMATCH"


class ModelNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "MODEL_NOT_FOUND"


class ModelAlreadyExists(ProfilesError):
    code = Code.ALREADY_EXISTS
    reason = "MODEL_ALREADY_EXISTS"


class InvalidModel(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_MODEL"


class ModelProfileNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "MODEL_PROFILE_NOT_FOUND"


class ModelProfileAlreadyExists(ProfilesError):
    code = Code.ALREADY_EXISTS
    reason = "MODEL_PROFILE_ALREADY_EXISTS"


class InvalidModelProfile(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_MODEL_PROFILE"


class NoModelForRole(ProfilesError):
    code = Code.FAILED_PRECONDITION
    reason = "NO_MODEL_FOR_ROLE"


class PersonaNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "PERSONA_NOT_FOUND"


class PersonaAlreadyExists(ProfilesError):
    code = Code.ALREADY_EXISTS
    reason = "PERSONA_ALREADY_EXISTS"


class InvalidPersona(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_PERSONA"


class PersonaSignatureInvalid(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "PERSONA_SIGNATURE_INVALID"


class RevisionNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "REVISION_NOT_FOUND"


class InvalidBenchmark(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_BENCHMARK"


class ScoringAlreadyRunning(ProfilesError):
    """Metadata `scoring_run`: the run in progress (on this replica or another)."""

    code = Code.FAILED_PRECONDITION
    reason = "SCORING_ALREADY_RUNNING"


class TenantNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "TENANT_NOT_FOUND"


class TenantAlreadyExists(ProfilesError):
    code = Code.ALREADY_EXISTS
    reason = "TENANT_ALREADY_EXISTS"


class InvalidTenant(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_TENANT"


class BundleMalformed(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "BUNDLE_MALFORMED"


class BundleSignatureInvalid(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "BUNDLE_SIGNATURE_INVALID"


class BundleKeyNotTrusted(ProfilesError):
    code = Code.FAILED_PRECONDITION
    reason = "BUNDLE_KEY_NOT_TRUSTED"


class BundleKeyExpired(ProfilesError):
    code = Code.FAILED_PRECONDITION
    reason = "BUNDLE_KEY_EXPIRED"


class BundleVersionNotNewer(ProfilesError):
    code = Code.FAILED_PRECONDITION
    reason = "BUNDLE_VERSION_NOT_NEWER"


class PersonaNotFromBundle(ProfilesError):
    code = Code.FAILED_PRECONDITION
    reason = "PERSONA_NOT_FROM_BUNDLE"


class TrustedKeyNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "TRUSTED_KEY_NOT_FOUND"


class TrustedKeyAlreadyExists(ProfilesError):
    code = Code.ALREADY_EXISTS
    reason = "TRUSTED_KEY_ALREADY_EXISTS"


class InvalidTrustedKey(ProfilesError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_TRUSTED_KEY"


class TurnNotFound(ProfilesError):
    code = Code.NOT_FOUND
    reason = "TURN_NOT_FOUND"


class TrainingNotAllowed(ProfilesError):
    code = Code.FAILED_PRECONDITION
    reason = "TRAINING_NOT_ALLOWED"


class DefaultsInvalid(ValueError):
    """The deployment defaults file cannot be used; the service does not start."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}:\n  " + "\n  ".join(problems))
        self.problems = problems
