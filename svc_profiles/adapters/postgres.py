"""svc_profiles's state in Postgres (schema `profiles`): the model registry, tenants'
personas and model profiles, and the outbox of svc_profiles's events (a use case writes its
events with `skm_runtime.outbox.add_events` in the transaction of the change they describe;
the relay of `__main__` publishes them). Migrated at start, by one process at a time.

Updates are compare-and-set on the etag the caller read. Listings sort in code point
order (COLLATE "C"), the order the core merges built-in personas in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from skm_runtime.outbox import add_events, outbox_ddl
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole, Money
from svc_profiles.adapters.events import TOPIC_PROFILES, auto_selected_event, record
from svc_profiles.adapters.pg import SCHEMA, database, migrate, split_name
from svc_profiles.bundle import example_json, override_json
from svc_profiles.model import (
    AutoSelectBounds,
    AutoSelected,
    Capability,
    Inserted,
    Lineage,
    Model,
    ModelProfile,
    Persona,
    PersonaCursor,
    PersonaExample,
    Revision,
    RevisionOrigin,
)

# Revisions: each persona and model profile row carries its current revision (id, origin,
# author, note, time), and every revision is kept whole as the row was (to_jsonb of it, read
# back with jsonb_populate_record, so columns added later need no change here), written in the
# transaction of the change. Rows stored before revisions existed become revision 1 here.
_REVISIONS_DDL = f"""
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS revision_id bigint NOT NULL DEFAULT 0;
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS revision_origin text NOT NULL DEFAULT 'CREATE';
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS revision_author text NOT NULL DEFAULT '';
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS revision_note text NOT NULL DEFAULT '';
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS revision_time timestamptz;
-- PersonaExample messages in the proto3 JSON mapping (training mode adds them).
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS examples jsonb NOT NULL DEFAULT '[]';
-- The publisher's version of the bundle the persona was installed from; 0: none.
ALTER TABLE {SCHEMA}.personas ADD COLUMN IF NOT EXISTS bundle_version bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {SCHEMA}.persona_revisions (
    tenant text NOT NULL,
    persona_id text NOT NULL,
    revision_id bigint NOT NULL,
    persona jsonb NOT NULL,
    CONSTRAINT persona_revisions_pkey PRIMARY KEY (tenant, persona_id, revision_id)
);
UPDATE {SCHEMA}.personas SET revision_id = 1, revision_time = update_time WHERE revision_id = 0;
INSERT INTO {SCHEMA}.persona_revisions (tenant, persona_id, revision_id, persona)
    SELECT p.tenant, p.persona_id, p.revision_id, to_jsonb(p) FROM {SCHEMA}.personas p
    ON CONFLICT DO NOTHING;
ALTER TABLE {SCHEMA}.model_profiles ADD COLUMN IF NOT EXISTS revision_id bigint NOT NULL DEFAULT 0;
ALTER TABLE {SCHEMA}.model_profiles ADD COLUMN IF NOT EXISTS revision_origin text NOT NULL DEFAULT 'CREATE';
ALTER TABLE {SCHEMA}.model_profiles ADD COLUMN IF NOT EXISTS revision_author text NOT NULL DEFAULT '';
ALTER TABLE {SCHEMA}.model_profiles ADD COLUMN IF NOT EXISTS revision_note text NOT NULL DEFAULT '';
ALTER TABLE {SCHEMA}.model_profiles ADD COLUMN IF NOT EXISTS revision_time timestamptz;
-- {{"max_cost": {{money}}, "min_quality": 0.8}}; NULL: auto mode is bounded by nothing.
ALTER TABLE {SCHEMA}.model_profiles ADD COLUMN IF NOT EXISTS auto_select_bounds jsonb;
CREATE TABLE IF NOT EXISTS {SCHEMA}.model_profile_revisions (
    tenant text NOT NULL,
    profile_id text NOT NULL,
    revision_id bigint NOT NULL,
    model_profile jsonb NOT NULL,
    CONSTRAINT model_profile_revisions_pkey PRIMARY KEY (tenant, profile_id, revision_id)
);
UPDATE {SCHEMA}.model_profiles SET revision_id = 1, revision_time = update_time WHERE revision_id = 0;
INSERT INTO {SCHEMA}.model_profile_revisions (tenant, profile_id, revision_id, model_profile)
    SELECT p.tenant, p.profile_id, p.revision_id, to_jsonb(p) FROM {SCHEMA}.model_profiles p
    ON CONFLICT DO NOTHING;
"""
_RECORD_PERSONA = f"""INSERT INTO {SCHEMA}.persona_revisions (tenant, persona_id, revision_id, persona)
    SELECT p.tenant, p.persona_id, p.revision_id, to_jsonb(p) FROM {SCHEMA}.personas p
    WHERE p.tenant = $1 AND p.persona_id = $2"""
_RECORD_PROFILE = f"""INSERT INTO {SCHEMA}.model_profile_revisions (tenant, profile_id, revision_id, model_profile)
    SELECT p.tenant, p.profile_id, p.revision_id, to_jsonb(p) FROM {SCHEMA}.model_profiles p
    WHERE p.tenant = $1 AND p.profile_id = $2"""

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.models (
    name text PRIMARY KEY,
    display_name text NOT NULL,
    endpoint_uri text NOT NULL,
    served_model text NOT NULL,
    credential_secret text NOT NULL,
    context_length integer NOT NULL,
    -- {{"currency_code": "USD", "units": 0, "nanos": 150000000}}
    input_cost jsonb NOT NULL,
    output_cost jsonb NOT NULL,
    capabilities text[] NOT NULL,
    embedding_dimensions integer NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    etag text NOT NULL
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.personas (
    tenant text NOT NULL,
    persona_id text NOT NULL,
    display_name text NOT NULL,
    system_prompt text NOT NULL,
    tone text NOT NULL,
    voice text NOT NULL,
    allowed_tools text[] NOT NULL,
    memory_namespaces text[] NOT NULL,
    -- ModelOverride messages in the proto3 JSON mapping.
    model_preferences jsonb NOT NULL,
    knowledge_snapshot text NOT NULL,
    bundle_digest text NOT NULL,
    signature bytea NOT NULL,
    signing_key text NOT NULL,
    lineage jsonb NOT NULL,
    -- The create's idempotency key ('' for none) and a hash of what it asked for.
    request_id text NOT NULL,
    request_fingerprint text NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    etag text NOT NULL,
    CONSTRAINT personas_pkey PRIMARY KEY (tenant, persona_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS personas_request ON {SCHEMA}.personas (tenant, request_id)
    WHERE request_id <> '';
CREATE INDEX IF NOT EXISTS personas_listing
    ON {SCHEMA}.personas (tenant, display_name COLLATE "C", persona_id COLLATE "C");
CREATE TABLE IF NOT EXISTS {SCHEMA}.model_profiles (
    tenant text NOT NULL,
    profile_id text NOT NULL,
    role text NOT NULL,
    mode text NOT NULL,
    model_tiers text[] NOT NULL,
    temperature double precision,
    max_output_tokens integer NOT NULL,
    auto_select boolean NOT NULL,
    request_id text NOT NULL,
    request_fingerprint text NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    etag text NOT NULL,
    CONSTRAINT model_profiles_pkey PRIMARY KEY (tenant, profile_id),
    CONSTRAINT model_profiles_role_mode UNIQUE (tenant, role, mode)
);
CREATE UNIQUE INDEX IF NOT EXISTS model_profiles_request ON {SCHEMA}.model_profiles (tenant, request_id)
    WHERE request_id <> '';
{_REVISIONS_DDL}{outbox_ddl(SCHEMA)}
"""

_MODEL_COLUMNS = (
    "name, display_name, endpoint_uri, served_model, credential_secret, context_length, input_cost, output_cost,"
    " capabilities, embedding_dimensions, create_time, update_time, etag"
)
_REVISION_COLUMNS = "revision_id, revision_origin, revision_author, revision_note, revision_time"
_PERSONA_COLUMNS = (
    "tenant, persona_id, display_name, system_prompt, tone, voice, allowed_tools, memory_namespaces,"
    " model_preferences, knowledge_snapshot, bundle_digest, signature, signing_key, lineage, create_time,"
    f" update_time, etag, {_REVISION_COLUMNS}, examples, bundle_version"
)
_PROFILE_COLUMNS = (
    "tenant, profile_id, role, mode, model_tiers, temperature, max_output_tokens, auto_select, create_time,"
    f" update_time, etag, {_REVISION_COLUMNS}, auto_select_bounds"
)


# -- rows <-> domain --------------------------------------------------------------------------


def _money_json(money: Money) -> str:
    return json.dumps({"currency_code": money.currency_code, "units": money.units, "nanos": money.nanos})


def _money(text: str) -> Money:
    value = json.loads(text)
    return Money(value["currency_code"], int(value["units"]), int(value["nanos"]))


def _model(row: Any) -> Model:
    return Model(
        name=row["name"],
        display_name=row["display_name"],
        endpoint_uri=row["endpoint_uri"],
        served_model=row["served_model"],
        context_length=row["context_length"],
        capabilities=tuple(Capability(c) for c in row["capabilities"]),
        credential_secret=row["credential_secret"],
        input_cost=_money(row["input_cost"]),
        output_cost=_money(row["output_cost"]),
        embedding_dimensions=row["embedding_dimensions"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def _model_values(model: Model) -> tuple[Any, ...]:
    return (
        model.name,
        model.display_name,
        model.endpoint_uri,
        model.served_model,
        model.credential_secret,
        model.context_length,
        _money_json(model.input_cost),
        _money_json(model.output_cost),
        [c.value for c in model.capabilities],
        model.embedding_dimensions,
        model.create_time,
        model.update_time,
        model.etag,
    )


def _revision(row: Any) -> Revision | None:
    if not row["revision_id"]:
        return None
    origin = row["revision_origin"]
    return Revision(
        revision_id=str(row["revision_id"]),
        create_time=row["revision_time"],
        origin=RevisionOrigin(origin) if origin in RevisionOrigin.__members__ else RevisionOrigin.UPDATE,
        author=row["revision_author"],
        note=row["revision_note"],
    )


def _revision_values(revision: Revision | None) -> tuple[Any, ...]:
    assert revision is not None  # the core stamps every stored value with its revision
    return (int(revision.revision_id), revision.origin.value, revision.author, revision.note, revision.create_time)


def _bounds_json(bounds: AutoSelectBounds | None) -> str | None:
    if bounds is None:
        return None
    return json.dumps({"max_cost": json.loads(_money_json(bounds.max_cost)), "min_quality": bounds.min_quality})


def _bounds(text: str | None) -> AutoSelectBounds | None:
    if text is None:
        return None
    value = json.loads(text)
    return AutoSelectBounds(_money(json.dumps(value["max_cost"])), float(value["min_quality"]))


def _override(value: dict[str, Any]) -> ModelOverride:
    role = value.get("role", "")
    return ModelOverride(
        role=ModelRole(role.removeprefix("MODEL_ROLE_")) if role else None,
        model_tiers=tuple(value.get("modelTiers", ())),
        temperature=float(value["temperature"]) if "temperature" in value else None,
        max_output_tokens=int(value.get("maxOutputTokens", 0)),
    )


def _persona(row: Any) -> Persona:
    lineage = json.loads(row["lineage"])
    return Persona(
        name=f"{row['tenant']}/personas/{row['persona_id']}",
        display_name=row["display_name"],
        system_prompt=row["system_prompt"],
        tone=row["tone"],
        voice=row["voice"],
        allowed_tools=tuple(row["allowed_tools"]),
        memory_namespaces=tuple(row["memory_namespaces"]),
        model_preferences=tuple(_override(o) for o in json.loads(row["model_preferences"])),
        knowledge_snapshot=row["knowledge_snapshot"],
        bundle_digest=row["bundle_digest"],
        signature=bytes(row["signature"]),
        signing_key=row["signing_key"],
        lineage=Lineage(
            lineage.get("parent_persona", ""),
            lineage.get("parent_bundle_digest", ""),
            tuple(lineage.get("training_sessions", ())),
            lineage.get("operator", ""),
            lineage.get("parent_revision_id", ""),
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
        revision=_revision(row),
        examples=tuple(
            PersonaExample(e.get("userText", ""), e.get("agentText", ""), e.get("sourceTurn", ""))
            for e in json.loads(row["examples"])
        ),
        bundle_version=row["bundle_version"],
    )


def _persona_values(persona: Persona) -> tuple[Any, ...]:
    tenant, persona_id = split_name(persona.name)
    lineage = persona.lineage
    return (
        tenant,
        persona_id,
        persona.display_name,
        persona.system_prompt,
        persona.tone,
        persona.voice,
        list(persona.allowed_tools),
        list(persona.memory_namespaces),
        json.dumps([override_json(o) for o in persona.model_preferences]),
        persona.knowledge_snapshot,
        persona.bundle_digest,
        persona.signature,
        persona.signing_key,
        json.dumps(
            {
                "parent_persona": lineage.parent_persona,
                "parent_bundle_digest": lineage.parent_bundle_digest,
                "training_sessions": list(lineage.training_sessions),
                "operator": lineage.operator,
                "parent_revision_id": lineage.parent_revision_id,
            }
        ),
        persona.create_time,
        persona.update_time,
        persona.etag,
        *_revision_values(persona.revision),
        json.dumps([example_json(e) for e in persona.examples]),
        persona.bundle_version,
    )


def _profile(row: Any) -> ModelProfile:
    return ModelProfile(
        name=f"{row['tenant']}/modelProfiles/{row['profile_id']}",
        role=ModelRole(row["role"]),
        mode=DeploymentMode(row["mode"]),
        model_tiers=tuple(row["model_tiers"]),
        temperature=row["temperature"],
        max_output_tokens=row["max_output_tokens"],
        auto_select=row["auto_select"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
        revision=_revision(row),
        auto_select_bounds=_bounds(row["auto_select_bounds"]),
    )


def _profile_values(profile: ModelProfile) -> tuple[Any, ...]:
    tenant, profile_id = split_name(profile.name)
    assert profile.role is not None  # the core stores only valid profiles
    assert profile.mode is not None
    return (
        tenant,
        profile_id,
        profile.role.value,
        profile.mode.value,
        list(profile.model_tiers),
        profile.temperature,
        profile.max_output_tokens,
        profile.auto_select,
        profile.create_time,
        profile.update_time,
        profile.etag,
        *_revision_values(profile.revision),
        _bounds_json(profile.auto_select_bounds),
    )


class PostgresProfileStore:
    """Models, personas and model profiles in the `profiles` schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool, shared with the outbox relay and the other stores of the schema."""
        return self._pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresProfileStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, command_timeout=10)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, _DDL)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), 10)

    # -- personas --------------------------------------------------------------------------

    async def get_persona(self, name: str) -> Persona | None:
        tenant, persona_id = split_name(name)
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_PERSONA_COLUMNS} FROM {SCHEMA}.personas WHERE tenant = $1 AND persona_id = $2",
                tenant,
                persona_id,
            )
        return None if row is None else _persona(row)

    async def persona_by_request(self, tenant: str, request_id: str) -> tuple[Persona, str] | None:
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_PERSONA_COLUMNS}, request_fingerprint FROM {SCHEMA}.personas"
                " WHERE tenant = $1 AND request_id = $2 AND request_id <> ''",
                tenant,
                request_id,
            )
        return None if row is None else (_persona(row), row["request_fingerprint"])

    async def insert_persona(self, persona: Persona, request_id: str, fingerprint: str) -> Inserted:
        values = _persona_values(persona)
        with database():
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.personas ({_PERSONA_COLUMNS}, request_id, request_fingerprint)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14::jsonb, $15,"
                        " $16, $17, $18, $19, $20, $21, $22, $23::jsonb, $24, $25, $26)",
                        *values,
                        request_id,
                        fingerprint,
                    )
                    await conn.execute(_RECORD_PERSONA, values[0], values[1])
            except asyncpg.UniqueViolationError as exc:
                return Inserted.REQUEST_TAKEN if exc.constraint_name == "personas_request" else Inserted.NAME_TAKEN
        return Inserted.INSERTED

    async def replace_persona(self, persona: Persona, etag: str) -> bool:
        values = _persona_values(persona)
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    f"""UPDATE {SCHEMA}.personas SET display_name = $3, system_prompt = $4, tone = $5, voice = $6,
                        allowed_tools = $7, memory_namespaces = $8, model_preferences = $9::jsonb,
                        knowledge_snapshot = $10, bundle_digest = $11, signature = $12, signing_key = $13,
                        lineage = $14::jsonb, update_time = $15, etag = $16, revision_id = $17,
                        revision_origin = $18, revision_author = $19, revision_note = $20, revision_time = $21,
                        examples = $22::jsonb, bundle_version = $23
                        WHERE tenant = $1 AND persona_id = $2 AND etag = $24 RETURNING 1""",
                    *values[:14],
                    *values[15:],
                    etag,
                )
                if done is not None:
                    await conn.execute(_RECORD_PERSONA, values[0], values[1])
        return done is not None

    async def delete_persona(self, name: str, etag: str) -> bool:
        tenant, persona_id = split_name(name)
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    f"DELETE FROM {SCHEMA}.personas WHERE tenant = $1 AND persona_id = $2"
                    " AND ($3 = '' OR etag = $3) RETURNING 1",
                    tenant,
                    persona_id,
                    etag,
                )
        return done is not None

    async def persona_revision(self, name: str, revision_id: int) -> Persona | None:
        tenant, persona_id = split_name(name)
        with database():
            row = await self._pool.fetchrow(
                f"""SELECT r.* FROM {SCHEMA}.persona_revisions v,
                        jsonb_populate_record(NULL::{SCHEMA}.personas, v.persona) r
                    WHERE v.tenant = $1 AND v.persona_id = $2 AND v.revision_id = $3""",
                tenant,
                persona_id,
                revision_id,
            )
        return None if row is None else _persona(row)

    async def list_persona_revisions(self, name: str, before: int, limit: int) -> list[Persona]:
        tenant, persona_id = split_name(name)
        with database():
            rows = await self._pool.fetch(
                f"""SELECT r.* FROM {SCHEMA}.persona_revisions v,
                        jsonb_populate_record(NULL::{SCHEMA}.personas, v.persona) r
                    WHERE v.tenant = $1 AND v.persona_id = $2 AND ($3 = 0 OR v.revision_id < $3)
                    ORDER BY v.revision_id DESC LIMIT $4""",
                tenant,
                persona_id,
                before,
                limit,
            )
        return [_persona(row) for row in rows]

    async def list_personas(self, tenant: str, after: PersonaCursor | None, limit: int) -> list[Persona]:
        with database():
            rows = await self._pool.fetch(
                f"""SELECT {_PERSONA_COLUMNS} FROM {SCHEMA}.personas
                    WHERE tenant = $1 AND ($2::boolean
                        OR (display_name COLLATE "C", persona_id COLLATE "C")
                            > ($3::text COLLATE "C", $4::text COLLATE "C"))
                    ORDER BY display_name COLLATE "C", persona_id COLLATE "C" LIMIT $5""",
                tenant,
                after is None,
                after.display_name if after else "",
                after.persona_id if after else "",
                limit,
            )
        return [_persona(row) for row in rows]

    async def stored_persona_ids(self, tenant: str, persona_ids: Collection[str]) -> set[str]:
        with database():
            rows = await self._pool.fetch(
                f"SELECT persona_id FROM {SCHEMA}.personas WHERE tenant = $1 AND persona_id = ANY($2::text[])",
                tenant,
                list(persona_ids),
            )
        return {row["persona_id"] for row in rows}

    # -- models ----------------------------------------------------------------------------

    async def get_models(self, names: Collection[str]) -> dict[str, Model]:
        if not names:
            return {}
        with database():
            rows = await self._pool.fetch(
                f"SELECT {_MODEL_COLUMNS} FROM {SCHEMA}.models WHERE name = ANY($1::text[])", list(names)
            )
        return {row["name"]: _model(row) for row in rows}

    async def insert_model(self, model: Model) -> bool:
        with database():
            done = await self._pool.fetchval(
                f"""INSERT INTO {SCHEMA}.models ({_MODEL_COLUMNS})
                    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13)
                    ON CONFLICT (name) DO NOTHING RETURNING 1""",
                *_model_values(model),
            )
        return done is not None

    async def replace_model(self, model: Model, etag: str) -> bool:
        values = _model_values(model)
        with database():
            done = await self._pool.fetchval(
                f"""UPDATE {SCHEMA}.models SET display_name = $2, endpoint_uri = $3, served_model = $4,
                    credential_secret = $5, context_length = $6, input_cost = $7::jsonb, output_cost = $8::jsonb,
                    capabilities = $9, embedding_dimensions = $10, update_time = $11, etag = $12
                    WHERE name = $1 AND etag = $13 RETURNING 1""",
                *values[:10],
                model.update_time,
                model.etag,
                etag,
            )
        return done is not None

    async def upsert_models(self, models: Sequence[Model]) -> None:
        if not models:
            return
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    f"""INSERT INTO {SCHEMA}.models AS m ({_MODEL_COLUMNS})
                        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, $11, $12, $13)
                        ON CONFLICT (name) DO UPDATE SET display_name = EXCLUDED.display_name,
                            endpoint_uri = EXCLUDED.endpoint_uri, served_model = EXCLUDED.served_model,
                            credential_secret = EXCLUDED.credential_secret,
                            context_length = EXCLUDED.context_length, input_cost = EXCLUDED.input_cost,
                            output_cost = EXCLUDED.output_cost, capabilities = EXCLUDED.capabilities,
                            embedding_dimensions = EXCLUDED.embedding_dimensions,
                            update_time = EXCLUDED.update_time, etag = EXCLUDED.etag
                        WHERE (m.display_name, m.endpoint_uri, m.served_model, m.credential_secret,
                               m.context_length, m.input_cost, m.output_cost, m.capabilities,
                               m.embedding_dimensions)
                          IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.endpoint_uri, EXCLUDED.served_model,
                               EXCLUDED.credential_secret, EXCLUDED.context_length, EXCLUDED.input_cost,
                               EXCLUDED.output_cost, EXCLUDED.capabilities, EXCLUDED.embedding_dimensions)""",
                    [_model_values(model) for model in models],
                )

    async def list_models(self, capability: Capability | None, after: str, limit: int) -> list[Model]:
        with database():
            rows = await self._pool.fetch(
                f"""SELECT {_MODEL_COLUMNS} FROM {SCHEMA}.models
                    WHERE name COLLATE "C" > $1::text COLLATE "C" AND ($2::text = '' OR $2::text = ANY(capabilities))
                    ORDER BY name COLLATE "C" LIMIT $3""",
                after,
                capability.value if capability else "",
                limit,
            )
        return [_model(row) for row in rows]

    # -- model profiles --------------------------------------------------------------------

    async def get_model_profile(self, name: str) -> ModelProfile | None:
        tenant, profile_id = split_name(name)
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_PROFILE_COLUMNS} FROM {SCHEMA}.model_profiles WHERE tenant = $1 AND profile_id = $2",
                tenant,
                profile_id,
            )
        return None if row is None else _profile(row)

    async def model_profile_by_request(self, tenant: str, request_id: str) -> tuple[ModelProfile, str] | None:
        with database():
            row = await self._pool.fetchrow(
                f"SELECT {_PROFILE_COLUMNS}, request_fingerprint FROM {SCHEMA}.model_profiles"
                " WHERE tenant = $1 AND request_id = $2 AND request_id <> ''",
                tenant,
                request_id,
            )
        return None if row is None else (_profile(row), row["request_fingerprint"])

    async def insert_model_profile(self, profile: ModelProfile, request_id: str, fingerprint: str) -> Inserted:
        values = _profile_values(profile)
        with database():
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.model_profiles ({_PROFILE_COLUMNS}, request_id, request_fingerprint)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
                        " $17::jsonb, $18, $19)",
                        *values,
                        request_id,
                        fingerprint,
                    )
                    await conn.execute(_RECORD_PROFILE, values[0], values[1])
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "model_profiles_request":
                    return Inserted.REQUEST_TAKEN
                return Inserted.NAME_TAKEN
        return Inserted.INSERTED

    async def replace_model_profile(
        self, profile: ModelProfile, etag: str, auto_selected: AutoSelected | None = None
    ) -> bool:
        values = _profile_values(profile)
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    f"""UPDATE {SCHEMA}.model_profiles SET model_tiers = $5, temperature = $6,
                        max_output_tokens = $7, auto_select = $8, update_time = $9, etag = $10,
                        revision_id = $11, revision_origin = $12, revision_author = $13, revision_note = $14,
                        revision_time = $15, auto_select_bounds = $16::jsonb
                        WHERE tenant = $1 AND profile_id = $2 AND role = $3 AND mode = $4 AND etag = $17
                        RETURNING 1""",
                    *values[:8],
                    *values[9:],
                    etag,
                )
                if done is not None:
                    await conn.execute(_RECORD_PROFILE, values[0], values[1])
                if done is not None and auto_selected is not None:
                    at = profile.update_time or datetime.now(UTC)
                    await add_events(
                        conn, SCHEMA, [record(auto_selected_event(values[0], auto_selected, at), TOPIC_PROFILES)]
                    )
        return done is not None

    async def delete_model_profile(self, name: str, etag: str) -> bool:
        tenant, profile_id = split_name(name)
        with database():
            async with self._pool.acquire() as conn, conn.transaction():
                done = await conn.fetchval(
                    f"DELETE FROM {SCHEMA}.model_profiles WHERE tenant = $1 AND profile_id = $2"
                    " AND ($3 = '' OR etag = $3) RETURNING 1",
                    tenant,
                    profile_id,
                    etag,
                )
                if done is not None:
                    await conn.execute(
                        f"DELETE FROM {SCHEMA}.model_profile_revisions WHERE tenant = $1 AND profile_id = $2",
                        tenant,
                        profile_id,
                    )
        return done is not None

    async def model_profile_revision(self, name: str, revision_id: int) -> ModelProfile | None:
        tenant, profile_id = split_name(name)
        with database():
            row = await self._pool.fetchrow(
                f"""SELECT r.* FROM {SCHEMA}.model_profile_revisions v,
                        jsonb_populate_record(NULL::{SCHEMA}.model_profiles, v.model_profile) r
                    WHERE v.tenant = $1 AND v.profile_id = $2 AND v.revision_id = $3""",
                tenant,
                profile_id,
                revision_id,
            )
        return None if row is None else _profile(row)

    async def list_model_profile_revisions(self, name: str, before: int, limit: int) -> list[ModelProfile]:
        tenant, profile_id = split_name(name)
        with database():
            rows = await self._pool.fetch(
                f"""SELECT r.* FROM {SCHEMA}.model_profile_revisions v,
                        jsonb_populate_record(NULL::{SCHEMA}.model_profiles, v.model_profile) r
                    WHERE v.tenant = $1 AND v.profile_id = $2 AND ($3 = 0 OR v.revision_id < $3)
                    ORDER BY v.revision_id DESC LIMIT $4""",
                tenant,
                profile_id,
                before,
                limit,
            )
        return [_profile(row) for row in rows]

    async def list_model_profiles(self, tenant: str) -> list[ModelProfile]:
        with database():
            rows = await self._pool.fetch(
                f"SELECT {_PROFILE_COLUMNS} FROM {SCHEMA}.model_profiles WHERE tenant = $1", tenant
            )
        return [_profile(row) for row in rows]
