"""svc_audio's adapters on their real backends: feature vectors in Qdrant (local mode, a
folder of the test's own), quality events through the Postgres outbox to Kafka, and the
voice-stream directory in Redis.

GrpcRelay is covered by the service's e2e tests, between replicas.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from skm.events.v1 import event_pb2
from skm_runtime.errors import ServiceUnavailable
from skm_stack import RunningStack
from svc_audio.adapters.events import SCHEMA, TOPIC_ANALYTICS, OutboxQualityLog, open_outbox
from svc_audio.adapters.qdrant import QdrantFeatureStore, collection_of
from svc_audio.adapters.redis import RedisStreamDirectory
from svc_audio.errors import InvalidResourceName
from svc_audio.model import FeaturePoint, Features, Quality, QualityReport
from tests.conftest import StackFactory
from tests.support.databases import fresh_database
from tests.support.ports import free_port

ACME, GLOBEX = "tenants/acme", "tenants/globex"
DIMENSIONS = 106
STORED_AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _features(seed: int) -> Features:
    rng = np.random.default_rng(seed)
    return Features(
        rms=0.1 + seed / 100,
        zero_crossing_rate=0.05,
        spectral_entropy=0.7,
        pitch_hz=120.0 + seed,
        speech_rate=3.5,
        vector=rng.normal(size=DIMENSIONS).astype(np.float32),
        mfcc_mean=rng.normal(size=13).astype(np.float32),
    )


def _point(tenant: str, seed: int, *, utterance: int = 1) -> FeaturePoint:
    session = f"{tenant}/sessions/s{seed}"
    return FeaturePoint(
        tenant=tenant,
        session=session,
        voice_stream=f"{session}/voiceStreams/v{seed}",
        utterance=utterance,
        turn=f"{session}/turns/t{seed}",
        features=_features(seed),
        agitation_score=0.25,
    )


@pytest.fixture
async def features(tmp_path: Path) -> AsyncIterator[QdrantFeatureStore]:
    store = await QdrantFeatureStore.open(str(tmp_path / "qdrant"), now=lambda: STORED_AT)
    try:
        yield store
    finally:
        await store.close()


async def test_each_tenant_has_its_own_collection_and_search_finds_the_nearest(
    features: QdrantFeatureStore, tmp_path: Path
) -> None:
    acme = [_point(ACME, seed) for seed in range(5)]
    ids = [await features.add(point) for point in acme]
    globex_id = await features.add(_point(GLOBEX, 100))
    assert len({*ids, globex_id}) == 6
    assert collection_of(ACME) == "audio_features__acme"

    # Near acme's third point: it first, and only acme's points.
    query = acme[2].features.vector + np.float32(0.01) * _features(7).vector
    found = await features.search_similar(ACME, query.tolist(), 3)
    assert found[0].id == ids[2]
    assert found[0].score > 0.99
    assert [hit.score for hit in found] == sorted((hit.score for hit in found), reverse=True)
    assert len(found) == 3
    assert {hit.id for hit in found} <= set(ids)
    # Globex's search sees its one point and nothing of acme's, even for acme's vector.
    assert [hit.id for hit in await features.search_similar(GLOBEX, query.tolist(), 10)] == [globex_id]
    assert await features.search_similar("tenants/initech", query.tolist(), 10) == []

    stored = found[0].payload
    point = acme[2]
    assert stored == {
        "tenant": ACME,
        "session": point.session,
        "voice_stream": point.voice_stream,
        "utterance": 1,
        "turn": point.turn,
        "rms": pytest.approx(point.features.rms),
        "zero_crossing_rate": pytest.approx(0.05),
        "spectral_entropy": pytest.approx(0.7),
        "pitch_hz": pytest.approx(122.0),
        "speech_rate": pytest.approx(3.5),
        "agitation_score": pytest.approx(0.25),
        "mfcc_mean": pytest.approx(point.features.mfcc_mean.tolist(), rel=1e-6),
        "stored_at": STORED_AT.isoformat(),
    }


async def test_points_outlive_the_process_and_the_folder_has_one_owner(tmp_path: Path) -> None:
    folder = str(tmp_path / "qdrant")
    first = await QdrantFeatureStore.open(folder)
    try:
        kept = await first.add(_point(ACME, 1))
        for _ in range(2):  # the refusal leaves the owner's lock alone
            with pytest.raises(RuntimeError, match="in use"):
                await QdrantFeatureStore.open(folder)
    finally:
        await first.close()
    again = await QdrantFeatureStore.open(folder)
    try:
        found = await again.search_similar(ACME, _features(1).vector.tolist(), 1)
        assert [hit.id for hit in found] == [kept]
    finally:
        await again.close()
    with pytest.raises(ServiceUnavailable):
        await again.add(_point(ACME, 2))


@pytest.mark.parametrize("tenant", ["acme", "tenants/", "tenants/Acme", "tenants/acme/users/u", "tenants/../x"])
async def test_a_tenant_that_is_no_tenant_name_is_refused(features: QdrantFeatureStore, tenant: str) -> None:
    with pytest.raises(InvalidResourceName):
        await features.add(_point(tenant, 1))
    with pytest.raises(InvalidResourceName):
        await features.search_similar(tenant, [1.0] * DIMENSIONS, 1)


# -- quality events -----------------------------------------------------------------------


async def _events(bootstrap: str, tenants: set[str]) -> dict[str, event_pb2.Event]:
    """The event of each of these tenants on the analytics topic, by tenant (other tests
    publish there too), once every one arrived and nothing more of theirs came for a while."""
    consumer = AIOKafkaConsumer(
        TOPIC_ANALYTICS, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[tuple[bytes, event_pb2.Event]] = []
    try:
        async with asyncio.timeout(60):
            while not tenants <= {event.tenant for _, event in found}:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend((r.key, event_pb2.Event.FromString(r.value)) for r in records)
                found = [(key, event) for key, event in found if event.tenant in tenants]
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found.extend((r.key, event_pb2.Event.FromString(r.value)) for r in records)
    finally:
        await consumer.stop()
    found = [(key, event) for key, event in found if event.tenant in tenants]
    assert len(found) == len(tenants)  # each once
    assert all(key == event.tenant.encode() for key, event in found)
    return {event.tenant: event for _, event in found}


async def test_quality_reaches_the_analytics_topic_with_what_was_not_measured_unset(stack: RunningStack) -> None:
    # Tenants of this run only: the topic is shared with every other test.
    measured_tenant, empty_tenant = f"tenants/q{uuid.uuid4().hex[:8]}", f"tenants/q{uuid.uuid4().hex[:8]}"
    measured = QualityReport(
        tenant=measured_tenant,
        quality=Quality(
            word_error_rate=0.125,
            recognition_latency=0.3125,
            response_latency=1.5,
            first_token_latency=0.75,
            recognition_rtf=0.15,
            synthesized_seconds=2.25,
        ),
        voice_stream=f"{measured_tenant}/sessions/s1/voiceStreams/v1",
        turn=f"{measured_tenant}/sessions/s1/turns/t1",
        persona=f"{measured_tenant}/personas/p1",
        recognizer="faster-whisper/tiny.en",
        voice="voices/joe",
    )
    nothing = QualityReport(tenant=empty_tenant, quality=Quality())
    async with fresh_database(stack, "skm_audio_outbox") as dsn:
        outbox = await open_outbox(dsn, stack.kafka_bootstrap)
        # Opening again migrates nothing twice (another replica starting).
        again = await open_outbox(dsn, stack.kafka_bootstrap)
        await again.pool.close()
        log = OutboxQualityLog(outbox.outbox, now=lambda: STORED_AT)
        outbox.outbox.start()
        outbox.relay.start()
        try:
            log.record(measured)
            log.record(nothing)
            got = await _events(stack.kafka_bootstrap, {measured_tenant, empty_tenant})
        finally:
            await outbox.outbox.close()
            await outbox.relay.close()
            async with outbox.pool.acquire() as conn:
                left = await conn.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox WHERE published_at IS NULL")
            await outbox.pool.close()
        assert left == 0

    first = got[measured_tenant]
    assert first.source == "audio"
    uuid.UUID(first.event_id)
    assert first.event_time.ToDatetime(tzinfo=UTC) == STORED_AT
    assert first.WhichOneof("payload") == "audio_quality_measured"
    p = first.audio_quality_measured
    assert (p.voice_stream, p.turn, p.persona, p.recognizer, p.voice) == (
        measured.voice_stream,
        measured.turn,
        measured.persona,
        "faster-whisper/tiny.en",
        "voices/joe",
    )
    m = p.metrics
    assert m.word_error_rate == 0.125
    assert m.recognition_latency.ToNanoseconds() == 312_500_000
    assert m.response_latency.ToNanoseconds() == 1_500_000_000
    assert m.first_token_latency.ToNanoseconds() == 750_000_000
    assert m.recognition_real_time_factor == pytest.approx(0.15)
    assert m.synthesized_duration.ToNanoseconds() == 2_250_000_000
    for unset in ("mean_opinion_score", "synthesis_latency", "synthesis_real_time_factor"):
        assert not m.HasField(unset), unset

    second = got[empty_tenant]
    assert second.event_id != first.event_id
    assert second.audio_quality_measured.voice_stream == ""
    assert second.audio_quality_measured.HasField("metrics")
    assert not [field.name for field, _ in second.audio_quality_measured.metrics.ListFields()]


# -- the voice-stream directory -----------------------------------------------------------


@pytest.fixture
async def directories(stack: RunningStack) -> AsyncIterator[tuple[RedisStreamDirectory, RedisStreamDirectory]]:
    """Two replicas' directories on one Redis."""
    one, other = RedisStreamDirectory.connect(stack.redis_url), RedisStreamDirectory.connect(stack.redis_url)
    try:
        yield one, other
    finally:
        await one.close()
        await other.close()


def _stream() -> str:
    return f"{ACME}/sessions/s1/voiceStreams/{uuid.uuid4().hex}"


async def test_a_claim_names_its_holder_until_released(
    directories: tuple[RedisStreamDirectory, RedisStreamDirectory],
) -> None:
    one, other = directories
    stream = _stream()
    assert await other.holder(stream) is None
    await one.claim(stream, "10.0.0.1:50053", 30)
    assert await other.holder(stream) == "10.0.0.1:50053"
    # Releasing a stream it never claimed changes nothing.
    await other.release(stream)
    assert await one.holder(stream) == "10.0.0.1:50053"
    await one.release(stream)
    assert await other.holder(stream) is None
    await one.release(stream)  # twice: nothing left to do


async def test_a_late_release_leaves_another_holders_claim(
    directories: tuple[RedisStreamDirectory, RedisStreamDirectory],
) -> None:
    one, other = directories
    stream = _stream()
    await one.claim(stream, "10.0.0.1:50053", 30)
    # One's claim lapsed and another replica took the stream over.
    await other.claim(stream, "10.0.0.2:50053", 30)
    await one.release(stream)
    assert await one.holder(stream) == "10.0.0.2:50053"
    await other.release(stream)
    assert await one.holder(stream) is None


async def test_a_claim_expires_unless_refreshed(
    directories: tuple[RedisStreamDirectory, RedisStreamDirectory],
) -> None:
    one, other = directories
    lapsing, refreshed = _stream(), _stream()
    await one.claim(lapsing, "10.0.0.1:50053", 0.4)
    await one.claim(refreshed, "10.0.0.1:50053", 0.4)
    for _ in range(3):
        await asyncio.sleep(0.25)
        await one.claim(refreshed, "10.0.0.1:50053", 0.4)
    assert await other.holder(lapsing) is None
    assert await other.holder(refreshed) == "10.0.0.1:50053"
    await one.release(refreshed)


async def test_an_unreachable_redis_is_unavailable() -> None:
    gone = RedisStreamDirectory.connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(ServiceUnavailable):
            await gone.claim(_stream(), "10.0.0.1:50053", 30)
        with pytest.raises(ServiceUnavailable):
            await gone.holder(_stream())
    finally:
        await gone.close()


async def test_the_first_claim_after_a_redis_restart_succeeds(stack_factory: StackFactory) -> None:
    """A pooled connection is a dead socket once Redis restarts; the claim retries on a new one."""
    own = stack_factory(("redis",))
    directory = RedisStreamDirectory.connect(own.redis_url)
    try:
        stream = _stream()
        await directory.claim(stream, "10.0.0.1:50053", 30)
        assert own.redis is not None
        own.redis.stop()
        await asyncio.to_thread(own.start_server, "redis")
        await directory.claim(stream, "10.0.0.2:50053", 30)
        assert await directory.holder(stream) == "10.0.0.2:50053"
    finally:
        await directory.close()
