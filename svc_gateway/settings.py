"""Gateway settings: its own address, tokens, rate limits, and where each backend listens."""

from __future__ import annotations

from dataclasses import dataclass, field

from skm_runtime.settings import ServiceSettings, address, bounded


@dataclass(frozen=True, slots=True)
class GatewaySettings(ServiceSettings):
    """SKM_GATEWAY_* plus the SKM_<SERVICE>_ADDR each backend binds."""

    addr: str = address("127.0.0.1:50051")
    conversation_addr: str = address("127.0.0.1:50052", env="SKM_CONVERSATION_ADDR")
    audio_addr: str = address("127.0.0.1:50053", env="SKM_AUDIO_ADDR")
    tools_addr: str = address("127.0.0.1:50054", env="SKM_TOOLS_ADDR")
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    profiles_addr: str = address("127.0.0.1:50056", env="SKM_PROFILES_ADDR")
    analytics_addr: str = address("127.0.0.1:50057", env="SKM_ANALYTICS_ADDR")
    redis_url: str = field(default="redis://127.0.0.1:56379/0", metadata={"env": "SKM_REDIS_URL"})
    # The JWKS document (JSON) whose keys sign tokens. No keys: every call is refused.
    jwks_file: str = ""
    # Signing algorithms accepted; never taken from a token.
    jwt_algorithms: tuple[str, ...] = ("EdDSA", "ES256")
    jwt_issuer: str = "skm-dev"
    jwt_audience: str = "skm"
    # Token buckets: calls per second and burst, per tenant and per user.
    tenant_rate_per_second: float = bounded(200.0, low=0.001, high=1e6)
    tenant_burst: float = bounded(400.0, low=1.0, high=1e6)
    user_rate_per_second: float = bounded(50.0, low=0.001, high=1e6)
    user_burst: float = bounded(100.0, low=1.0, high=1e6)
    # Tokens a gateway process leases from a bucket at once and spends without asking Redis
    # (at most a tenth of the bucket's burst; 1: every call asks Redis), and how long a lease
    # lasts: another process's unspent lease keeps at most that many tokens from this one
    # for at most that long.
    rate_lease_tokens: int = bounded(20, low=1, high=10_000)
    rate_lease_seconds: float = bounded(1.0, low=0.01, high=60.0)
    # How long a tenant's constitution hash is trusted before it is read again.
    constitution_ttl_seconds: float = bounded(2.0, low=0.0, high=3600.0)
    # How many tenants' constitution hashes are remembered at most (least recently used out).
    constitution_cache_tenants: int = bounded(10_000, low=1, high=10_000_000)
    # How long svc_policy's ALLOW for (user, permission, resource) is reused without asking
    # again (0: ask on every call). A revocation stops calls within this plus svc_policy's
    # SKM_POLICY_CACHE_TTL_SECONDS. DENY and REQUIRES_APPROVAL are never reused.
    decision_ttl_seconds: float = bounded(1.0, low=0.0, high=10.0)
    # The largest message a client may send, each message of a stream included; a larger one
    # is refused with INVALID_ARGUMENT / MESSAGE_TOO_LARGE (metadata: limit, size). The
    # services behind receive at most SKM_GRPC_MAX_RECEIVE_BYTES: keep this at or below it.
    max_message_bytes: int = bounded(4 * 1024 * 1024, low=1024, high=64 * 1024 * 1024)
    # gRPC's own receive limit on the gateway's server, above `max_message_bytes` so that
    # messages between the two are answered by the gateway, with an ErrorInfo; gRPC refuses
    # larger ones itself (RESOURCE_EXHAUSTED, no details).
    max_receive_bytes: int = bounded(64 * 1024 * 1024, low=1024, high=256 * 1024 * 1024)
    # How long a health check of a backend may take before it counts as NOT_SERVING.
    backend_health_timeout_seconds: float = bounded(2.0, low=0.05, high=60.0)

    def backend_addr(self, owner: str) -> str:
        """The address of the service named `owner` in the contract's `owner` option."""
        value = getattr(self, f"{owner}_addr", None)
        if not isinstance(value, str):
            raise KeyError(f"no address setting for service {owner!r}")
        return value
