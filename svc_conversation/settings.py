"""svc_conversation settings: SKM_CONVERSATION_* plus the stores and services the stack names for everyone."""

from __future__ import annotations

from dataclasses import dataclass, field

from skm_runtime.settings import ServiceSettings, address, bounded


@dataclass(frozen=True, slots=True)
class ConversationSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50052")
    # Where the other svc_conversation processes dial this one to intervene in the turns it
    # runs (stored with each turn's lease); empty: `addr` (set it when `addr` binds 0.0.0.0).
    advertise_addr: str = address("")
    postgres_dsn: str = field(default="postgresql://skm@127.0.0.1:55432/skm", metadata={"env": "SKM_POSTGRES_DSN"})
    redis_url: str = field(default="redis://127.0.0.1:56379/0", metadata={"env": "SKM_REDIS_URL"})
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    tools_addr: str = address("127.0.0.1:50054", env="SKM_TOOLS_ADDR")
    profiles_addr: str = address("127.0.0.1:50056", env="SKM_PROFILES_ADDR")
    # svc_analytics: what a tenant has spent, for its model budgets.
    analytics_addr: str = address("127.0.0.1:50057", env="SKM_ANALYTICS_ADDR")
    # How long a tenant's budgets (which exist) and spend (svc_analytics' sum) are reused
    # before a PRIMARY call asks again; spend also lags by svc_analytics' ingestion (~1 s).
    budget_cache_seconds: float = bounded(2.0, low=0.0, high=300.0)
    # A model call's first token goes out at once; the following ones are coalesced into one
    # token delta per this many milliseconds (0: every token its own event) or per this many
    # pieces, whichever comes first: each delta is a number, a pending row, a Redis publish
    # and a message to every attached stream.
    delta_tick_ms: int = bounded(20, low=0, high=1000)
    delta_max_tokens: int = bounded(32, low=1, high=10_000)
    # Model-then-tool iterations per turn; the last one may only call `response`.
    max_iterations: int = bounded(25, low=1, high=500)
    # A model call that sends no first token in this time, or stalls this long between
    # tokens, fails over to the next tier.
    model_first_token_timeout_seconds: float = bounded(30.0, low=0.1, high=600.0)
    model_idle_timeout_seconds: float = bounded(30.0, low=0.1, high=600.0)
    # Wall-clock limit of one tool call of the loop.
    tool_timeout_seconds: float = bounded(120.0, low=1.0, high=3600.0)
    # History is compressed by the UTILITY model when the prompt would pass this share of
    # the model's context window.
    compress_at_context_share: float = bounded(0.7, low=0.1, high=0.95)
    # Bytes of UTF-8 per token when sizes are estimated: 2 is safe for every tokenizer seen
    # (English runs near 4 on real models, about 2 on the tiny test models).
    bytes_per_token: float = bounded(2.0, low=0.5, high=8.0)
    # How deep subordinates may nest: a session this many superiors down is not offered
    # call_subordinate (0 turns subordinates off).
    max_subordinate_depth: int = bounded(2, low=0, high=10)
    # Refuse messages that carry prompt-injection markers (the verdict is recorded either way).
    refuse_prompt_injection: bool = True
    # A process that stops renewing its lease on a running turn for this long loses the
    # turn to another process (or to itself after a restart), which resumes it.
    lease_seconds: float = bounded(15.0, low=1.0, high=600.0)
    maintain_interval_seconds: float = bounded(2.0, low=0.1, high=600.0)
    # Sessions with no running turn and no attached stream are dropped from memory after this.
    idle_evict_seconds: float = bounded(60.0, low=1.0, high=86_400.0)
    # Live events go to a Redis Stream per session, for streams attached to other processes:
    # trimmed to about this many entries (a follower further behind re-attaches and reads
    # Postgres), and dropped this long after the session's last event.
    live_events_max_length: int = bounded(5000, low=100, high=1_000_000)
    live_events_ttl_seconds: int = bounded(3600, low=60, high=604_800)
    # Channels kept open to the processes that run turns (interventions are forwarded there).
    owner_channels: int = bounded(64, low=1, high=4096)

    @property
    def advertised(self) -> str:
        """The address this process's runner leases carry."""
        return self.advertise_addr or self.addr
