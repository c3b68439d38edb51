"""svc_profiles's use cases: personas, the model registry, tenants' model profiles, and the
resolution of a role into models for one call site.

Tenancy: a caller that carries a principal (any admitted call) sees only its own
tenant; another tenant's persona or profile does not exist for it (NOT_FOUND), as in
svc_tools and svc_policy. Whether the caller may use the parent at all (admin for writes,
member for reads) is admission's check, from the contract's authz options.

Built-in personas (the deployment defaults) exist in every tenant without being stored: a
tenant reads them as "tenants/{t}/personas/{id}" until it creates a persona with that id,
which then replaces the built-in one for that tenant. Updating a built-in persona stores
the tenant's own copy; deleting that copy brings the built-in one back. A built-in persona
itself cannot be deleted (PERSONA_NOT_FOUND: the tenant has none of its own by that id).

Signatures: a signature is stored only after it verified, with a trusted key, against the
bundle digest it is stored with; a persona whose key is no longer trusted is shown
unsigned.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from svc_profiles import checks
from svc_profiles.bundle import bundle_digest, bundle_json, canonical_json
from svc_profiles.errors import (
    DefaultsInvalid,
    EtagMismatch,
    InvalidModel,
    InvalidModelProfile,
    InvalidPageToken,
    InvalidPersona,
    InvalidUpdateMask,
    ModelAlreadyExists,
    ModelNotFound,
    ModelProfileAlreadyExists,
    ModelProfileNotFound,
    NoModelForRole,
    PersonaAlreadyExists,
    PersonaNotFound,
    PersonaSignatureInvalid,
    ProfilesError,
    RequestIdReused,
    RevisionNotFound,
)
from svc_profiles.model import (
    MODE_ORDER,
    ROLE_ORDER,
    AutoSelected,
    BuiltInPersona,
    Capability,
    Defaults,
    Inserted,
    Model,
    ModelProfile,
    Persona,
    PersonaCursor,
    ResolvedModelProfile,
    Revision,
    RevisionOrigin,
    RoleDefault,
)
from svc_profiles.ports import PersonaKeys, PersonaSigner, ProfileStore

from .revisions import (
    ROLLBACK_NOTE,
    author_of,
    bounds_violations,
    next_revision,
    revision_number,
    split_revision,
)

T = TypeVar("T")

PERSONA_PAGE = 50
MODEL_PAGE = 100
PROFILE_PAGE = 50
REVISION_PAGE = 50

# Update mask paths (the wire's field names) -> the domain field they change.
PERSONA_PATHS = {
    path: path
    for path in (
        "display_name",
        "system_prompt",
        "tone",
        "voice",
        "allowed_tools",
        "memory_namespaces",
        "model_preferences",
        "knowledge_snapshot",
        "signature",
        "signing_key",
        "lineage",
    )
}
MODEL_PATHS = {
    "display_name": "display_name",
    "endpoint_uri": "endpoint_uri",
    "served_model": "served_model",
    "credential_secret": "credential_secret",
    "context_length": "context_length",
    "input_cost_per_million_tokens": "input_cost",
    "output_cost_per_million_tokens": "output_cost",
    "capabilities": "capabilities",
    "embedding_dimensions": "embedding_dimensions",
}
MODEL_PROFILE_PATHS = {
    path: path for path in ("model_tiers", "temperature", "max_output_tokens", "auto_select", "auto_select_bounds")
}

SOURCE_SESSION = "session override"
SOURCE_PERSONA = "persona preference"
SOURCE_PROFILE = "tenant profile"
SOURCE_DEFAULT = "deployment default"


def _new_etag() -> str:
    return uuid.uuid4().hex


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _own(tenant: str, principal: Principal | None, not_found: ProfilesError) -> None:
    """Another tenant's resources do not exist for a caller with a principal."""
    if principal is not None and principal.tenant and principal.tenant != tenant:
        raise not_found


def _mask(paths: Sequence[str], allowed: dict[str, str]) -> dict[str, str]:
    """The mask's paths -> the domain fields; "*" is every field the mask may name."""
    if not paths:
        raise InvalidUpdateMask("update_mask is required", metadata={"allowed": ",".join(allowed)})
    if list(paths) == ["*"]:
        return dict(allowed)
    wrong = [path for path in paths if path not in allowed]
    if wrong:
        raise InvalidUpdateMask(
            f"update_mask names fields that cannot change: {', '.join(p[:100] for p in wrong[:10])}",
            metadata={"paths": ",".join(wrong[:10])[:500], "allowed": ",".join(allowed)},
        )
    return {path: allowed[path] for path in paths}


def _changed(current: Any, patch: Any, fields: dict[str, str]) -> Any:
    return dataclasses.replace(current, **{attr: getattr(patch, attr) for attr in fields.values()})


def builtin_persona_of(builtin: BuiltInPersona, tenant: str, signer: PersonaSigner | None = None) -> Persona:
    """A built-in persona as one tenant sees it (its tools named in that tenant), signed by
    the deployment's key when it has one."""
    persona = Persona(
        name=f"{tenant}/personas/{builtin.persona_id}",
        display_name=builtin.display_name,
        system_prompt=builtin.system_prompt,
        tone=builtin.tone,
        voice=builtin.voice,
        allowed_tools=tuple(f"{tenant}/tools/{tool}" for tool in builtin.tool_ids),
        memory_namespaces=builtin.memory_namespaces,
        model_preferences=builtin.model_preferences,
        built_in=True,
    )
    digest = bundle_digest(persona)
    signature = signer.sign(bytes.fromhex(digest)) if signer is not None else b""
    return dataclasses.replace(
        persona,
        bundle_digest=digest,
        signature=signature,
        signing_key=signer.key_id if signer is not None else "",
        # Stable across processes and restarts; changes when the configured persona does.
        etag=f"builtin-{digest[:24]}",
    )


class Profiles:
    """The profile service's use cases over its store and the trusted persona keys."""

    def __init__(
        self,
        store: ProfileStore,
        keys: PersonaKeys,
        defaults: Defaults,
        *,
        now: Callable[[], datetime],
        builtin_signer: PersonaSigner | None = None,
    ) -> None:
        """`builtin_signer` signs the built-in personas (its key must be among `keys`);
        without one they are unsigned, so that only DEVELOPER-mode sessions may run them."""
        self._store = store
        self._keys = keys
        self._defaults = defaults
        self._builtins = {persona.persona_id: persona for persona in defaults.personas}
        self._now = now
        self._signer = builtin_signer

    # -- deployment defaults ---------------------------------------------------------------

    async def start(self) -> None:
        """Check the deployment defaults and register their models (before serving).

        Raises DefaultsInvalid naming every problem: a service with broken defaults must not
        start rather than fail its first resolutions.
        """
        problems = [f"{v.field}: {v.description}" for v in self._defaults_violations()]
        if self._signer is not None and not self._keys.is_trusted(self._signer.key_id):
            problems.append(f"the built-in persona key {self._signer.key_id} is not among the trusted keys")
        if problems:
            raise DefaultsInvalid("deployment defaults", problems)
        now = self._now()
        await self._store.upsert_models(
            [dataclasses.replace(m, create_time=now, update_time=now, etag=_new_etag()) for m in self._defaults.models]
        )
        referenced = {tier for default in self._defaults.role_defaults for tier in default.model_tiers}
        for builtin in self._defaults.personas:
            referenced |= {tier for pref in builtin.model_preferences for tier in pref.model_tiers}
        registered = await self._store.get_models(referenced)
        for index, default in enumerate(self._defaults.role_defaults):
            at = f"role_defaults[{index}].model_tiers"
            problems += [f"{at}: {tier} is not registered" for tier in default.model_tiers if tier not in registered]
            tiers = [registered[tier] for tier in default.model_tiers if tier in registered]
            problems += [f"{v.field}: {v.description}" for v in checks.role_fit_violations(at, default.role, tiers)]
            problems += [
                f"{v.field}: {v.description}"
                for v in checks.token_fit_violations(
                    f"role_defaults[{index}].max_output_tokens", default.max_output_tokens, tiers
                )
            ]
        for builtin in self._defaults.personas:
            for index, pref in enumerate(builtin.model_preferences):
                at = f"personas[{builtin.persona_id}].model_preferences[{index}].model_tiers"
                problems += [f"{at}: {tier} is not registered" for tier in pref.model_tiers if tier not in registered]
        if problems:
            raise DefaultsInvalid("deployment defaults", problems)

    def _defaults_violations(self) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        names: set[str] = set()
        for index, model in enumerate(self._defaults.models):
            out += checks.model_violations(model, f"models[{index}]")
            if model.name in names:
                out.append(FieldViolation(f"models[{index}].name", f"{model.name} listed twice"))
            names.add(model.name)
        keys: set[tuple[ModelRole, DeploymentMode | None]] = set()
        for index, default in enumerate(self._defaults.role_defaults):
            at = f"role_defaults[{index}]"
            if (default.role, default.mode) in keys:
                out.append(FieldViolation(at, "a second default for this role and mode"))
            keys.add((default.role, default.mode))
            out += checks.tiers_violations(f"{at}.model_tiers", default.model_tiers, required=True)
            out += checks.temperature_violations(f"{at}.temperature", default.temperature)
            out += checks.tokens_violations(f"{at}.max_output_tokens", default.max_output_tokens)
        ids: set[str] = set()
        for builtin in self._defaults.personas:
            at = f"personas[{builtin.persona_id}]"
            if not checks.is_persona_id(builtin.persona_id):
                out.append(FieldViolation(f"{at}.id", "1-63 characters of [a-z0-9-], starting with a letter"))
            if builtin.persona_id in ids:
                out.append(FieldViolation(f"{at}.id", "listed twice"))
            ids.add(builtin.persona_id)
            out += [
                dataclasses.replace(v, field=v.field.replace("persona.", f"{at}.", 1))
                for v in checks.persona_violations(builtin_persona_of(builtin, "tenants/example"), "tenants/example")
            ]
        return out

    # -- personas --------------------------------------------------------------------------

    async def create_persona(
        self,
        parent: str,
        persona_id: str,
        persona: Persona,
        request_id: str,
        principal: Principal | None,
        *,
        author: str = "",
    ) -> Persona:
        tenant = checks.tenant_of_parent(parent)
        violations = checks.check_request_id(request_id, "request_id")
        if not checks.is_persona_id(persona_id):
            violations.append(FieldViolation("persona_id", "1-63 characters of [a-z0-9-], starting with a letter"))
        candidate = dataclasses.replace(
            persona,
            name=f"{tenant}/personas/{persona_id}",
            bundle_digest="",
            create_time=None,
            update_time=None,
            etag="",
            built_in=False,
            revision=None,
        )
        violations += checks.persona_violations(candidate, tenant)
        if violations:
            raise InvalidPersona("the persona is invalid", violations=violations)
        await self._check_preferences(candidate)
        digest = bundle_digest(candidate)
        self._verify_signature(candidate, digest)
        now = self._now()
        stored = dataclasses.replace(
            candidate,
            bundle_digest=digest,
            create_time=now,
            update_time=now,
            etag=_new_etag(),
            revision=next_revision(
                await self._last_revision(f"{tenant}/personas/{persona_id}"),
                RevisionOrigin.CREATE,
                author_of(principal, author),
                "",
                now,
            ),
        )
        fingerprint = _fingerprint(
            {
                "id": persona_id,
                "bundle": bundle_json(candidate),
                "signature": base64.b64encode(candidate.signature).decode(),
                "signing_key": candidate.signing_key,
                "lineage": dataclasses.asdict(candidate.lineage),
            }
        )
        if request_id:
            earlier = await self._store.persona_by_request(tenant, request_id)
            if earlier is not None:
                return self._shown(_same_request(earlier, fingerprint, request_id))
        outcome = await self._store.insert_persona(stored, request_id, fingerprint)
        if outcome is Inserted.NAME_TAKEN and request_id:
            # Two copies of one request racing: either unique index may refuse the loser.
            earlier = await self._store.persona_by_request(tenant, request_id)
            if earlier is not None:
                return self._shown(_same_request(earlier, fingerprint, request_id))
        if outcome is Inserted.NAME_TAKEN:
            raise PersonaAlreadyExists("the tenant has a persona with this id", metadata={"persona": stored.name})
        if outcome is Inserted.REQUEST_TAKEN:
            earlier = await self._store.persona_by_request(tenant, request_id)
            if earlier is None:  # created and deleted in between
                raise PersonaNotFound("the persona this request created is gone", metadata={"request_id": request_id})
            return self._shown(_same_request(earlier, fingerprint, request_id))
        return self._shown(stored)

    async def get_persona(self, name: str, principal: Principal | None) -> Persona:
        """The persona, or with "@{revision_id}" that revision of it."""
        base, revision = split_revision(name)
        tenant, _ = checks.split_persona(base)
        _own(tenant, principal, _persona_not_found(base))
        return self._shown(await self._find_persona_at(base, revision))

    async def list_personas(
        self, parent: str, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[Persona], str]:
        """The tenant's personas and the built-in ones it has not replaced, by display name
        (code point order), then id."""
        tenant = checks.tenant_of_parent(parent)
        size = checks.page_size_of(page_size, PERSONA_PAGE)
        position = checks.position_of(page_token, f"personas|{tenant}")
        after = None
        if position is not None:
            if not (isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) for p in position)):
                raise InvalidPageToken("page_token is not one this service issued")
            after = PersonaCursor(position[0], position[1])
        stored = await self._store.list_personas(tenant, after, size + 1)
        replaced = await self._store.stored_persona_ids(tenant, list(self._builtins)) if self._builtins else set()
        builtins = [builtin_persona_of(b, tenant, self._signer) for i, b in self._builtins.items() if i not in replaced]
        if after is not None:
            builtins = [p for p in builtins if (p.display_name, p.persona_id) > (after.display_name, after.persona_id)]
        merged = sorted([*stored, *builtins], key=lambda p: (p.display_name, p.persona_id))
        page = merged[:size]
        token = ""
        if len(merged) > size:
            last = page[-1]
            token = checks.token_of(f"personas|{tenant}", [last.display_name, last.persona_id])
        return [self._shown(p) for p in page], token

    async def update_persona(
        self, patch: Persona, mask: Sequence[str], principal: Principal | None, *, author: str = ""
    ) -> Persona:
        tenant, _ = checks.split_persona(patch.name)
        _own(tenant, principal, _persona_not_found(patch.name))
        fields = _mask(mask, PERSONA_PATHS)
        if not patch.etag:
            raise InvalidPersona(
                "persona.etag is required", violations=[FieldViolation("persona.etag", "required: the etag read")]
            )
        current = await self._find_persona(patch.name)
        if patch.etag != current.etag:
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": patch.name})
        after: Persona = _changed(current, patch, fields)
        if "signature" in fields and not patch.signature:
            # Removing the signature removes its key too.
            after = dataclasses.replace(after, signing_key="")
        violations = checks.persona_violations(after, tenant)
        if violations:
            raise InvalidPersona("the persona is invalid", violations=violations)
        await self._check_preferences(after)
        digest = bundle_digest(after)
        if "signature" in fields or "signing_key" in fields:
            self._verify_signature(after, digest)
        elif digest != current.bundle_digest:
            # A changed bundle is no longer what was signed.
            after = dataclasses.replace(after, signature=b"", signing_key="")
        after = dataclasses.replace(after, bundle_digest=digest)
        return await self.revise_persona(current, after, RevisionOrigin.UPDATE, author_of(principal, author), "")

    async def revise_persona(
        self, current: Persona | None, after: Persona, origin: RevisionOrigin, author: str, note: str
    ) -> Persona:
        """Store `after` as the persona's next revision: the one write every change of a
        persona goes through (update, rollback, and the bundle installs and training that
        pass their own origin, author and note).

        `current` is the persona as the caller read it (None: it does not exist yet, and
        `after` becomes its revision "1"; a built-in one: `after` becomes the tenant's own
        copy, revision "1"). `after` holds the new values, its bundle digest and signature
        already settled by the caller; this stamps its revision, times and etag. Raises
        EtagMismatch when the persona changed since `current` was read, PersonaAlreadyExists
        when `current` is None and the tenant has one with that id.
        """
        now = self._now()
        # The stored persona this revision follows; none for a new one or a built-in's copy.
        previous = None if current is None or current.built_in else current
        revised = dataclasses.replace(
            after,
            name=current.name if current is not None else after.name,
            create_time=previous.create_time if previous is not None else now,
            update_time=now,
            etag=_new_etag(),
            built_in=False,
            revision=next_revision(
                previous.revision if previous is not None else await self._last_revision(after.name),
                origin,
                author,
                note,
                now,
            ),
        )
        if current is None:
            if await self._store.insert_persona(revised, "", "") is not Inserted.INSERTED:
                raise PersonaAlreadyExists("the tenant has a persona with this id", metadata={"persona": revised.name})
        elif current.built_in:
            # The tenant's own copy of a built-in persona, from now on in its place.
            if await self._store.insert_persona(revised, "", "") is not Inserted.INSERTED:
                raise EtagMismatch("the persona changed since it was read", metadata={"persona": current.name})
        elif not await self._store.replace_persona(revised, current.etag):
            await self._find_persona(current.name)
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": current.name})
        return self._shown(revised)

    async def list_persona_revisions(
        self, name: str, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[Persona], str]:
        """The persona's revisions, newest first; none for a built-in persona the tenant has
        not replaced (it changes only with the deployment's configuration)."""
        tenant, _ = checks.split_persona(name)
        _own(tenant, principal, _persona_not_found(name))
        size = checks.page_size_of(page_size, REVISION_PAGE)
        scope = f"personaRevisions|{name}"
        before = _revision_position(page_token, scope)
        current = await self._find_persona(name)
        if current.built_in:
            return [], ""
        found = await self._store.list_persona_revisions(name, before, size + 1)
        page = found[:size]
        last = page[-1].revision if page else None
        token = checks.token_of(scope, int(last.revision_id)) if len(found) > size and last is not None else ""
        return [self._shown(p) for p in page], token

    async def rollback_persona(
        self, name: str, revision_id: str, etag: str, principal: Principal | None, *, author: str = ""
    ) -> Persona:
        """A new revision with an earlier one's values, its signature included (it signed
        that revision's bundle digest, which the values bring back)."""
        tenant, _ = checks.split_persona(name)
        _own(tenant, principal, _persona_not_found(name))
        number = revision_number(revision_id)
        current = await self._find_persona(name)
        if etag and etag != current.etag:
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": name})
        earlier = await self._find_persona_at(name, number)
        await self._check_preferences(earlier)
        return await self.revise_persona(
            current,
            earlier,
            RevisionOrigin.ROLLBACK,
            author_of(principal, author),
            ROLLBACK_NOTE.format(revision_id=number),
        )

    async def delete_persona(self, name: str, etag: str, principal: Principal | None) -> None:
        tenant, persona_id = checks.split_persona(name)
        _own(tenant, principal, _persona_not_found(name))
        stored = await self._store.get_persona(name)
        if stored is None:
            if persona_id in self._builtins:
                raise PersonaNotFound(
                    "a built-in persona cannot be deleted; the tenant has no persona of its own with this id",
                    metadata={"persona": name, "built_in": "true"},
                )
            raise _persona_not_found(name)
        if etag and etag != stored.etag:
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": name})
        if not await self._store.delete_persona(name, etag):
            if await self._store.get_persona(name) is None:
                raise _persona_not_found(name)
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": name})

    async def _last_revision(self, name: str) -> Revision | None:
        """The newest revision a deleted persona of this name left behind: a persona made again
        with the id numbers its revisions after it, so that "{name}@{n}" never changes meaning
        for the sessions pinned to one."""
        kept = await self._store.list_persona_revisions(name, 0, 1)
        return kept[0].revision if kept else None

    async def _find_persona_at(self, name: str, revision: int | None) -> Persona:
        """The persona (revision None) or that revision of it: PERSONA_NOT_FOUND when there
        is no such persona, REVISION_NOT_FOUND when it has no such revision."""
        if revision is None:
            return await self._find_persona(name)
        found = await self._store.persona_revision(name, revision)
        if found is not None:
            return found
        await self._find_persona(name)
        raise RevisionNotFound(
            "the persona has no such revision", metadata={"persona": name[:200], "revision_id": str(revision)}
        )

    async def _find_persona(self, name: str) -> Persona:
        stored = await self._store.get_persona(name)
        if stored is not None:
            return stored
        tenant, persona_id = checks.split_persona(name)
        builtin = self._builtins.get(persona_id)
        if builtin is None:
            raise _persona_not_found(name)
        return builtin_persona_of(builtin, tenant, self._signer)

    async def check_preferences(self, persona: Persona) -> None:
        """MODEL_NOT_FOUND / INVALID_PERSONA unless every model a persona prefers is
        registered and fits its role (for personas other use cases write, e.g. bundles)."""
        await self._check_preferences(persona)

    async def _check_preferences(self, persona: Persona) -> None:
        await self._models_for(
            "persona.model_preferences",
            [(f"[{i}].model_tiers", o.role, o.model_tiers) for i, o in enumerate(persona.model_preferences)],
            InvalidPersona,
        )

    def _verify_signature(self, persona: Persona, digest: str) -> None:
        if not persona.signature:
            return
        if not self._keys.is_trusted(persona.signing_key):
            raise PersonaSignatureInvalid(
                "the signing key is not one of the deployment's trusted persona keys",
                metadata={"signing_key": persona.signing_key[:128]},
            )
        if len(persona.signature) != checks.SIGNATURE_BYTES or not self._keys.verify(
            persona.signing_key, persona.signature, bytes.fromhex(digest)
        ):
            raise PersonaSignatureInvalid(
                "the signature does not verify against the persona's bundle digest",
                metadata={"signing_key": persona.signing_key[:128], "bundle_digest": digest},
            )

    def _shown(self, persona: Persona) -> Persona:
        if persona.signature and not self._keys.is_trusted(persona.signing_key):
            return dataclasses.replace(persona, signature=b"", signing_key="")
        return persona

    # -- the model registry ----------------------------------------------------------------

    async def create_model(self, model: Model) -> Model:
        violations = checks.model_violations(model)
        if violations:
            raise InvalidModel("the model is invalid", violations=violations)
        now = self._now()
        stored = dataclasses.replace(
            model, capabilities=_unique(model.capabilities), create_time=now, update_time=now, etag=_new_etag()
        )
        if not await self._store.insert_model(stored):
            raise ModelAlreadyExists("a model with this name is registered", metadata={"model": model.name})
        return stored

    async def get_model(self, name: str) -> Model:
        checks.check_model_name(name)
        found = (await self._store.get_models([name])).get(name)
        if found is None:
            raise ModelNotFound("no such registered model", metadata={"model": name})
        return found

    async def list_models(
        self, capability: Capability | None, page_size: int, page_token: str
    ) -> tuple[list[Model], str]:
        size = checks.page_size_of(page_size, MODEL_PAGE)
        scope = f"models|{capability.value if capability else ''}"
        after = checks.position_of(page_token, scope)
        if after is not None and not isinstance(after, str):
            raise InvalidPageToken("page_token is not one this service issued")
        found = await self._store.list_models(capability, after or "", size + 1)
        page = found[:size]
        return page, checks.token_of(scope, page[-1].name) if len(found) > size else ""

    async def update_model(self, patch: Model, mask: Sequence[str]) -> Model:
        checks.check_model_name(patch.name)
        fields = _mask(mask, MODEL_PATHS)
        if not patch.etag:
            raise InvalidModel("model.etag is required", violations=[FieldViolation("model.etag", "required")])
        current = await self.get_model(patch.name)
        if patch.etag != current.etag:
            raise EtagMismatch("the model changed since it was read", metadata={"model": patch.name})
        after: Model = _changed(current, patch, fields)
        violations = checks.model_violations(after)
        if violations:
            raise InvalidModel("the model is invalid", violations=violations)
        after = dataclasses.replace(
            after, capabilities=_unique(after.capabilities), update_time=self._now(), etag=_new_etag()
        )
        if not await self._store.replace_model(after, current.etag):
            raise EtagMismatch("the model changed since it was read", metadata={"model": patch.name})
        return after

    # -- model profiles --------------------------------------------------------------------

    async def create_model_profile(
        self, parent: str, profile: ModelProfile, request_id: str, principal: Principal | None, *, author: str = ""
    ) -> ModelProfile:
        tenant = checks.tenant_of_parent(parent)
        violations = checks.check_request_id(request_id, "request_id") + _profile_violations(profile)
        if violations:
            raise InvalidModelProfile("the model profile is invalid", violations=violations)
        # Checked above; for the type checker.
        assert profile.role is not None
        assert profile.mode is not None
        await self._check_profile_models(profile)
        now = self._now()
        name = f"{tenant}/modelProfiles/{checks.model_profile_id(profile.role, profile.mode.value)}"
        stored = dataclasses.replace(
            profile,
            name=name,
            create_time=now,
            update_time=now,
            etag=_new_etag(),
            revision=next_revision(None, RevisionOrigin.CREATE, author_of(principal, author), "", now),
        )
        asked: dict[str, Any] = {
            "role": profile.role.value,
            "mode": profile.mode.value,
            "tiers": list(profile.model_tiers),
            "temperature": profile.temperature,
            "max_output_tokens": profile.max_output_tokens,
            "auto_select": profile.auto_select,
        }
        if profile.auto_select_bounds is not None:
            # Only when set, so that the fingerprints of earlier creates stay what they were.
            asked["auto_select_bounds"] = dataclasses.asdict(profile.auto_select_bounds)
        fingerprint = _fingerprint(asked)
        if request_id:
            earlier = await self._store.model_profile_by_request(tenant, request_id)
            if earlier is not None:
                return _same_request(earlier, fingerprint, request_id)
        outcome = await self._store.insert_model_profile(stored, request_id, fingerprint)
        if outcome is Inserted.NAME_TAKEN and request_id:
            # Two copies of one request racing: either unique index may refuse the loser.
            earlier = await self._store.model_profile_by_request(tenant, request_id)
            if earlier is not None:
                return _same_request(earlier, fingerprint, request_id)
        if outcome is Inserted.NAME_TAKEN:
            raise ModelProfileAlreadyExists(
                "the tenant has a profile for this role and mode",
                metadata={"model_profile": name, "role": profile.role.value, "mode": profile.mode.value},
            )
        if outcome is Inserted.REQUEST_TAKEN:
            earlier = await self._store.model_profile_by_request(tenant, request_id)
            if earlier is None:
                raise ModelProfileNotFound(
                    "the profile this request created is gone", metadata={"request_id": request_id}
                )
            return _same_request(earlier, fingerprint, request_id)
        return stored

    async def get_model_profile(self, name: str, principal: Principal | None) -> ModelProfile:
        """The profile, or with "@{revision_id}" that revision of it."""
        base, revision = split_revision(name)
        tenant, _ = checks.split_model_profile(base)
        _own(tenant, principal, _profile_not_found(base))
        if revision is not None:
            earlier = await self._store.model_profile_revision(base, revision)
            if earlier is not None:
                return earlier
        found = await self._store.get_model_profile(base)
        if found is None:
            raise _profile_not_found(base)
        if revision is not None:
            raise RevisionNotFound(
                "the model profile has no such revision",
                metadata={"model_profile": base[:200], "revision_id": str(revision)},
            )
        return found

    async def list_model_profiles(
        self,
        parent: str,
        role: ModelRole | None,
        mode: DeploymentMode | None,
        page_size: int,
        page_token: str,
        principal: Principal | None,
    ) -> tuple[list[ModelProfile], str]:
        """At most 12 per tenant (4 roles x 3 modes), so filtered and sorted here."""
        tenant = checks.tenant_of_parent(parent)
        size = checks.page_size_of(page_size, PROFILE_PAGE)
        scope = f"modelProfiles|{tenant}|{role.value if role else ''}|{mode.value if mode else ''}"
        offset = checks.position_of(page_token, scope) or 0
        if not isinstance(offset, int) or offset < 0:
            raise InvalidPageToken("page_token is not one this service issued")
        found = [
            p
            for p in await self._store.list_model_profiles(tenant)
            if (role is None or p.role is role) and (mode is None or p.mode is mode)
        ]
        found.sort(key=lambda p: (ROLE_ORDER[p.role] if p.role else 0, MODE_ORDER[p.mode] if p.mode else 0))
        page = found[offset : offset + size]
        more = len(found) > offset + size
        return page, checks.token_of(scope, offset + size) if more else ""

    async def update_model_profile(
        self, patch: ModelProfile, mask: Sequence[str], principal: Principal | None, *, author: str = ""
    ) -> ModelProfile:
        tenant, _ = checks.split_model_profile(patch.name)
        _own(tenant, principal, _profile_not_found(patch.name))
        fields = _mask(mask, MODEL_PROFILE_PATHS)
        if not patch.etag:
            raise InvalidModelProfile(
                "model_profile.etag is required", violations=[FieldViolation("model_profile.etag", "required")]
            )
        current = await self.get_model_profile(patch.name, principal)
        if patch.etag != current.etag:
            raise EtagMismatch("the model profile changed since it was read", metadata={"model_profile": patch.name})
        after: ModelProfile = _changed(current, patch, fields)
        violations = _profile_violations(after)
        if violations:
            raise InvalidModelProfile("the model profile is invalid", violations=violations)
        await self._check_profile_models(after)
        return await self.revise_model_profile(current, after, RevisionOrigin.UPDATE, author_of(principal, author), "")

    async def revise_model_profile(
        self,
        current: ModelProfile,
        after: ModelProfile,
        origin: RevisionOrigin,
        author: str,
        note: str,
        *,
        auto_selected: AutoSelected | None = None,
    ) -> ModelProfile:
        """Store `after` (the new values of the stored profile `current`, checked by the
        caller) as the profile's next revision: the one write every change of a profile goes
        through (update, rollback, and the scoring job's auto mode with origin AUTO_SELECT,
        author "services/profiles" and the scoring run in `note`). Raises EtagMismatch when
        the profile changed since `current` was read. `auto_selected`: auto mode's event of
        the change, written with it (its revision_id is the new revision's)."""
        now = self._now()
        revised = dataclasses.replace(
            after,
            name=current.name,
            role=current.role,
            mode=current.mode,
            create_time=current.create_time,
            update_time=now,
            etag=_new_etag(),
            revision=next_revision(current.revision, origin, author, note, now),
        )
        if auto_selected is not None and revised.revision is not None:
            auto_selected = dataclasses.replace(auto_selected, revision_id=revised.revision.revision_id)
        if not await self._store.replace_model_profile(revised, current.etag, auto_selected):
            if await self._store.get_model_profile(current.name) is None:
                raise _profile_not_found(current.name)
            raise EtagMismatch("the model profile changed since it was read", metadata={"model_profile": current.name})
        return revised

    async def list_model_profile_revisions(
        self, name: str, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[ModelProfile], str]:
        """The profile's revisions, newest first."""
        tenant, _ = checks.split_model_profile(name)
        _own(tenant, principal, _profile_not_found(name))
        size = checks.page_size_of(page_size, REVISION_PAGE)
        scope = f"modelProfileRevisions|{name}"
        before = _revision_position(page_token, scope)
        if await self._store.get_model_profile(name) is None:
            raise _profile_not_found(name)
        found = await self._store.list_model_profile_revisions(name, before, size + 1)
        page = found[:size]
        last = page[-1].revision if page else None
        token = checks.token_of(scope, int(last.revision_id)) if len(found) > size and last is not None else ""
        return page, token

    async def rollback_model_profile(
        self, name: str, revision_id: str, etag: str, principal: Principal | None, *, author: str = ""
    ) -> ModelProfile:
        """A new revision with an earlier one's tiers, temperature, token limit and bounds;
        auto_select keeps its current value, so undoing an automatic change does not turn
        auto mode back on by itself."""
        tenant, _ = checks.split_model_profile(name)
        _own(tenant, principal, _profile_not_found(name))
        number = revision_number(revision_id)
        current = await self.get_model_profile(name, principal)
        if etag and etag != current.etag:
            raise EtagMismatch("the model profile changed since it was read", metadata={"model_profile": name})
        earlier = await self.get_model_profile(f"{name}@{number}", principal)
        after = dataclasses.replace(earlier, auto_select=current.auto_select)
        await self._check_profile_models(after)
        return await self.revise_model_profile(
            current,
            after,
            RevisionOrigin.ROLLBACK,
            author_of(principal, author),
            ROLLBACK_NOTE.format(revision_id=number),
        )

    async def delete_model_profile(self, name: str, etag: str, principal: Principal | None) -> None:
        current = await self.get_model_profile(name, principal)
        if etag and etag != current.etag:
            raise EtagMismatch("the model profile changed since it was read", metadata={"model_profile": name})
        if not await self._store.delete_model_profile(name, etag):
            await self.get_model_profile(name, principal)
            raise EtagMismatch("the model profile changed since it was read", metadata={"model_profile": name})

    async def _check_profile_models(self, profile: ModelProfile) -> None:
        tiers = await self._models_for(
            "model_profile", [(".model_tiers", profile.role, profile.model_tiers)], InvalidModelProfile
        )
        fit = checks.token_fit_violations("model_profile.max_output_tokens", profile.max_output_tokens, tiers)
        if fit:
            raise InvalidModelProfile("the model profile is invalid", violations=fit)

    async def _models_for(
        self,
        field: str,
        groups: Sequence[tuple[str, ModelRole | None, Sequence[str]]],
        invalid: type[ProfilesError],
    ) -> list[Model]:
        """The registered models of each (field suffix, role, tiers) group, all in one read:
        MODEL_NOT_FOUND for the first unregistered one, `invalid` when one cannot do its role."""
        registered = await self._store.get_models({tier for _, _, tiers in groups for tier in tiers})
        out: list[Model] = []
        violations: list[FieldViolation] = []
        for suffix, role, tiers in groups:
            for index, tier in enumerate(tiers):
                if tier not in registered:
                    raise ModelNotFound(
                        "no such registered model", metadata={"model": tier, "field": f"{field}{suffix}[{index}]"}
                    )
            models = [registered[tier] for tier in tiers]
            if role is not None:
                violations += checks.role_fit_violations(f"{field}{suffix}", role, models)
            out += models
        if violations:
            raise invalid("a model cannot serve its role", violations=violations)
        return out

    # -- resolution ------------------------------------------------------------------------

    async def resolve(
        self,
        parent: str,
        role: ModelRole | None,
        mode: DeploymentMode | None,
        persona: str,
        overrides: Sequence[ModelOverride],
    ) -> ResolvedModelProfile:
        """Models, temperature and token limit of a role for one call site.

        Each setting comes from the highest layer that sets it: the session's override, the
        persona's preference, then the base (the tenant's profile for (role, mode), or else
        the deployment default for the role in that mode, or in every mode). An override's
        empty tiers, unset temperature or zero tokens keep the value below it.
        """
        tenant = checks.tenant_of_parent(parent)
        violations = checks.overrides_violations("overrides", overrides)
        if role is None:
            violations.append(FieldViolation("role", "required"))
        if mode is None:
            violations.append(FieldViolation("mode", "required"))
        if violations:
            raise InvalidModelProfile("the resolution request is invalid", violations=violations)
        assert role is not None
        assert mode is not None
        layers: list[tuple[str, ModelOverride]] = []
        base_name = f"{tenant}/modelProfiles/{checks.model_profile_id(role, mode.value)}"
        persona_name, revision = "", None
        if persona:
            # "{persona}@{revision_id}": a session's pinned revision, whose preferences apply.
            persona_name, revision = split_revision(persona)
            if checks.split_persona(persona_name)[0] != tenant:
                raise _persona_not_found(persona_name)

        async def preferences() -> Persona | None:
            return await self._find_persona_at(persona_name, revision) if persona_name else None

        # The profile and the persona are read side by side: a resolution is on every turn's
        # cold path (svc_conversation caches it for seconds).
        profile, found = await asyncio.gather(self._store.get_model_profile(base_name), preferences())
        if profile is not None:
            layers.append((SOURCE_PROFILE, _as_override(profile)))
        else:
            base_name = ""
            default = self._role_default(role, mode)
            if default is not None:
                layers.append((SOURCE_DEFAULT, _as_override(default)))
        if found is not None:
            layers += [(SOURCE_PERSONA, o) for o in found.model_preferences if o.role is role]
        layers += [(SOURCE_SESSION, o) for o in overrides if o.role is role]

        tiers: tuple[str, ...] = ()
        temperature: float | None = None
        tokens = 0
        sources = {"model_tiers": "", "temperature": "", "max_output_tokens": ""}
        for source, layer in layers:
            if layer.model_tiers:
                tiers, sources["model_tiers"] = layer.model_tiers, source
            if layer.temperature is not None:
                temperature, sources["temperature"] = layer.temperature, source
            if layer.max_output_tokens:
                tokens, sources["max_output_tokens"] = layer.max_output_tokens, source
        if not tiers:
            raise NoModelForRole(
                "nothing serves this role: no tenant profile, no deployment default, no override",
                metadata={"role": role.value, "mode": mode.value},
            )
        registered = await self._store.get_models(tiers)
        for tier in tiers:
            if tier not in registered:
                raise ModelNotFound(
                    f"the {sources['model_tiers']} names an unregistered model",
                    metadata={"model": tier, "source": sources["model_tiers"]},
                )
        models = tuple(registered[tier] for tier in tiers)
        unfit = checks.role_fit_violations("model_tiers", role, models)
        if unfit:
            raise InvalidModelProfile(f"the {sources['model_tiers']} names a model that cannot serve", violations=unfit)
        return ResolvedModelProfile(
            role=role,
            model_profile=base_name,
            model_tiers=models,
            temperature=temperature,
            max_output_tokens=tokens,
            sources=tuple((key, value) for key, value in sources.items() if value),
        )

    def _role_default(self, role: ModelRole, mode: DeploymentMode) -> RoleDefault | None:
        general = None
        for default in self._defaults.role_defaults:
            if default.role is role and default.mode is mode:
                return default
            if default.role is role and default.mode is None:
                general = default
        return general


def _profile_violations(profile: ModelProfile) -> list[FieldViolation]:
    return checks.model_profile_violations(profile) + bounds_violations(
        profile.auto_select_bounds, "model_profile.auto_select_bounds"
    )


def _revision_position(page_token: str, scope: str) -> int:
    """Where a page of revisions starts: below this revision id (0: from the newest)."""
    position = checks.position_of(page_token, scope)
    if position is None:
        return 0
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        raise InvalidPageToken("page_token is not one this service issued")
    return position


def _as_override(base: ModelProfile | RoleDefault) -> ModelOverride:
    return ModelOverride(base.role, base.model_tiers, base.temperature, base.max_output_tokens)


def _same_request(earlier: tuple[T, str], fingerprint: str, request_id: str) -> T:
    resource, stored_fingerprint = earlier
    if stored_fingerprint != fingerprint:
        raise RequestIdReused(
            "this request_id was used before for a different request", metadata={"request_id": request_id}
        )
    return resource


def _persona_not_found(name: str) -> PersonaNotFound:
    return PersonaNotFound("no such persona", metadata={"persona": name[:200]})


def _profile_not_found(name: str) -> ModelProfileNotFound:
    return ModelProfileNotFound("no such model profile", metadata={"model_profile": name[:200]})


def _unique(capabilities: Iterable[Capability]) -> tuple[Capability, ...]:
    return tuple(dict.fromkeys(capabilities))
