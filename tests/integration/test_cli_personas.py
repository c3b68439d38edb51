"""`skm persona` and `skm profile` against the real svc_profiles on PostgreSQL, served through
a gate over in-memory fakes (tokens signed here, a policy that allows), and called through the
CLI's own `main` as a user runs it: with a bearer token, through admission."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import jwt
import pytest

from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    persona_pb2,
    persona_service_pb2,
    persona_service_pb2_grpc,
)
from skm.type.v1 import deployment_mode_pb2, model_pb2
from skm_cli.__main__ import main
from skm_runtime.admission import Admission, PolicyAnswer
from skm_runtime.gate import Gate, public_rules
from skm_runtime.principal import principal_message, principal_metadata
from skm_runtime.server import RuntimeSettings, signed_channel
from svc_profiles.__main__ import build
from svc_profiles.settings import ProfilesSettings
from tests.integration.test_profiles_service import settings
from tests.support.runtime import serving
from tests.unit.test_admission_caches import DIGEST, _Constitutions, _keys, _Limiter, _Policy, _verifier

__all__ = ["settings"]  # the fixture, imported for these tests


@dataclass
class Profiles:
    target: str
    pem: bytes

    def token(self, tenant: str) -> str:
        claims = {
            "iss": "skm-dev",
            "aud": "skm",
            "sub": "olga",
            "tenant": tenant,
            "roles": ["admin"],
            "constitution_sha256": DIGEST,
            "exp": int(time.time()) + 600,
        }
        return jwt.encode(claims, self.pem, algorithm="EdDSA", headers={"kid": "k"})


@pytest.fixture(scope="module")
async def gated(settings: ProfilesSettings) -> AsyncIterator[Profiles]:
    pem, jwks = _keys()
    gate = Gate(
        Admission(
            _verifier(jwks), _Constitutions(DIGEST), _Limiter(), _Policy(PolicyAnswer(True, "ROLE_ALLOWS", "d1"))
        ),
        public_rules(),
        max_message_bytes=4 * 1024 * 1024,
        max_receive_bytes=8 * 1024 * 1024,
    )
    async with serving(await build(settings, RuntimeSettings()), gate=gate, record_spans=False) as served:
        yield Profiles(served.target, pem)
    await gate.close()


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.splitlines()]


async def _skm(service: Profiles, capsys: pytest.CaptureFixture[str], tenant: str, *argv: str) -> Ran:
    """`skm --url ... --token ... ARGV` on a thread (the CLI blocks; the server runs on this loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--url", f"http://{service.target}", "--token", service.token(tenant), *argv])
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


async def test_persona_revisions_show_and_rollback(gated: Profiles, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = f"c{uuid.uuid4().hex[:10]}"
    listed = await _skm(gated, capsys, tenant, "persona", "list", "--json")
    assert listed.code == 0, listed.err
    default = next(p for p in listed.lines() if str(p["name"]).endswith("/personas/default"))
    assert "revision" not in default, "a built-in persona has no revision"

    shown = await _skm(gated, capsys, tenant, "persona", "revisions", "default")
    assert shown.code == 0
    assert shown.out == ""
    assert "no revisions" in shown.err

    # Two revisions of the tenant's own copy of "default", made through the API the CLI uses.

    admin = principal_metadata(principal_message(f"tenants/{tenant}", f"tenants/{tenant}/users/olga", ["admin"]))
    async with signed_channel(gated.target) as channel:
        stub = persona_service_pb2_grpc.PersonaServiceStub(channel)
        name = f"tenants/{tenant}/personas/default"
        etag = (await stub.GetPersona(persona_service_pb2.GetPersonaRequest(name=name), metadata=admin)).persona.etag
        for prompt in ("First.", "Second."):
            reply = await stub.UpdatePersona(
                persona_service_pb2.UpdatePersonaRequest(
                    persona=persona_pb2.Persona(name=name, etag=etag, system_prompt=prompt),
                    update_mask={"paths": ["system_prompt"]},
                ),
                metadata=admin,
            )
            etag = reply.persona.etag

    revisions = await _skm(gated, capsys, tenant, "persona", "revisions", "default", "--json")
    assert [r["revision"]["revisionId"] for r in revisions.lines()] == ["2", "1"]  # type: ignore[index]
    human = await _skm(gated, capsys, tenant, "persona", "revisions", "default")
    assert human.code == 0
    assert f"tenants/{tenant}/users/olga" in human.out
    assert "update" in human.out

    first = await _skm(gated, capsys, tenant, "persona", "show", "default", "--revision", "1")
    assert first.code == 0
    assert first.out.rstrip().endswith("First.")
    assert "revision:      1" in first.out
    missing = await _skm(gated, capsys, tenant, "persona", "show", "default", "--revision", "9")
    assert missing.code == 1
    assert "REVISION_NOT_FOUND" in missing.err
    assert "revision_id=9" in missing.err

    stale = await _skm(gated, capsys, tenant, "persona", "rollback", "default", "1", "--etag", "old")
    assert stale.code == 1
    assert "ETAG_MISMATCH" in stale.err
    back = await _skm(gated, capsys, tenant, "persona", "rollback", "default", "1", "--json")
    assert back.code == 0, back.err
    (made,) = back.lines()
    assert made["revision"] == {  # type: ignore[comparison-overlap]
        **made["revision"],  # type: ignore[dict-item]
        "revisionId": "3",
        "origin": "ORIGIN_ROLLBACK",
        "author": f"tenants/{tenant}/users/olga",
        "note": "rollback to revision 1",
    }
    now = await _skm(gated, capsys, tenant, "persona", "show", "default")
    assert now.out.rstrip().endswith("First.")
    bad = await _skm(gated, capsys, tenant, "persona", "rollback", "default", "first")
    assert bad.code == 2
    assert "positive number" in bad.err


async def test_profile_revisions_and_rollback(gated: Profiles, capsys: pytest.CaptureFixture[str]) -> None:

    tenant = f"c{uuid.uuid4().hex[:10]}"
    admin = principal_metadata(principal_message(f"tenants/{tenant}", f"tenants/{tenant}/users/olga", ["admin"]))
    async with signed_channel(gated.target) as channel:
        stub = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)
        made = (
            await stub.CreateModelProfile(
                model_profile_service_pb2.CreateModelProfileRequest(
                    parent=f"tenants/{tenant}",
                    model_profile=model_profile_pb2.ModelProfile(
                        role=model_pb2.MODEL_ROLE_PRIMARY,
                        mode=deployment_mode_pb2.DEPLOYMENT_MODE_PRODUCTION,
                        model_tiers=["models/skm-tiny-untrained"],
                    ),
                ),
                metadata=admin,
            )
        ).model_profile
        await stub.UpdateModelProfile(
            model_profile_service_pb2.UpdateModelProfileRequest(
                model_profile=model_profile_pb2.ModelProfile(
                    name=made.name, etag=made.etag, model_tiers=["models/skm-tiny-untrained-large"]
                ),
                update_mask={"paths": ["model_tiers"]},
            ),
            metadata=admin,
        )

    listed = await _skm(gated, capsys, tenant, "profile", "list")
    assert listed.code == 0
    assert "primary-production" in listed.out
    assert "rev 2" in listed.out
    revisions = await _skm(gated, capsys, tenant, "profile", "revisions", "primary-production", "--json")
    assert [r["revision"]["revisionId"] for r in revisions.lines()] == ["2", "1"]  # type: ignore[index]
    back = await _skm(gated, capsys, tenant, "profile", "rollback", "primary-production", "--revision", "1")
    assert back.code == 0, back.err
    assert "rollback to revision 1" in back.out, back.err
    shown = await _skm(gated, capsys, tenant, "profile", "show", "primary-production")
    assert "models/skm-tiny-untrained\n" in shown.out
    assert "revision:      3" in shown.out
    nothing = await _skm(gated, capsys, tenant, "profile", "show", "pre-slm-test")
    assert nothing.code == 1
    assert "MODEL_PROFILE_NOT_FOUND" in nothing.err
