"""svc_analytics settings: SKM_ANALYTICS_* plus Kafka, which the stack names for everyone."""

from __future__ import annotations

from dataclasses import dataclass, field

from skm_runtime.settings import ServiceSettings, address, bounded

# Every topic the platform writes (skm.events.v1.Event's comment lists them, with their payloads).
PLATFORM_TOPICS = ("audit", "policy.blocked", "analytics", "model.profile.scored", "kamachiq.progress", "profiles")


@dataclass(frozen=True, slots=True)
class AnalyticsSettings(ServiceSettings):
    addr: str = address("127.0.0.1:50057")
    kafka_bootstrap: str = field(default="127.0.0.1:59092", metadata={"env": "SKM_KAFKA_BOOTSTRAP"})
    # The warehouse. "chdb:///path/to/dir": the ClickHouse engine in this process, its data in
    # that folder (one process per folder). "http://host:8123/db" (or https): a ClickHouse
    # server. Credentials of a server come from SKM_ANALYTICS_WAREHOUSE_PASSWORD, never the URL.
    warehouse_url: str = "chdb://.state/analytics/chdb"
    warehouse_user: str = "default"
    warehouse_password: str = field(default="", metadata={"secret": True})
    # Topics read, and the consumer group reading them: one group per warehouse.
    topics: tuple[str, ...] = PLATFORM_TOPICS
    consumer_group: str = "skm-analytics"
    # This process's stable name in the group (Kafka static membership); "" means
    # "{host name}:{addr}". Replicas need different ones.
    consumer_instance: str = ""
    # Where records that are not events go, with their reason and source offset.
    dead_letter_topic: str = "analytics.dead_letter"
    # A batch is written when it holds this many records or is this old, whichever first.
    batch_records: int = bounded(10_000, low=1, high=500_000)
    batch_seconds: float = bounded(1.0, low=0.01, high=60.0)
    # svc_policy: the tenants' model budgets, to announce their crossing.
    policy_addr: str = address("127.0.0.1:50055", env="SKM_POLICY_ADDR")
    # Upper bound of one read from Kafka, so a batch is not held up by a slow poll.
    poll_records: int = bounded(5_000, low=1, high=500_000)
