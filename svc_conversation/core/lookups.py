"""What a turn needs from svc_profiles and svc_tools, cached: personas, the models a role
resolves to for a session, and the tool catalogue.

Answers are used as they are while fresh, then refreshed off the turn's path until stale
(refresh.py): a change made elsewhere reaches turns within seconds, and a turn never
waits for an answer another one had moments ago.
"""

from __future__ import annotations

from skm_runtime.access import Principal
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
from svc_conversation.errors import PersonaNotFound
from svc_conversation.model import PersonaBrief, ResolvedProfile, Session, ToolSpec
from svc_conversation.ports import Profiles, ToolRunner
from svc_conversation.refresh import RefreshingCache

_PROFILE_SECONDS = (5.0, 60.0)
_CATALOGUE_SECONDS = (30.0, 300.0)

# What a resolved profile is cached by: (tenant, role, mode, persona, overrides).
_ResolveKey = tuple[str, ModelRole, DeploymentMode | None, str, tuple[ModelOverride, ...]]


class Lookups:
    def __init__(self, profiles: Profiles, tools: ToolRunner) -> None:
        self._profiles = profiles
        self._tools = tools
        self._catalogue: RefreshingCache[str, list[ToolSpec]] = RefreshingCache(
            fresh=_CATALOGUE_SECONDS[0], stale=_CATALOGUE_SECONDS[1]
        )
        self._personas: RefreshingCache[str, PersonaBrief] = RefreshingCache(
            fresh=_PROFILE_SECONDS[0], stale=_PROFILE_SECONDS[1]
        )
        self._resolved: RefreshingCache[_ResolveKey, ResolvedProfile] = RefreshingCache(
            fresh=_PROFILE_SECONDS[0], stale=_PROFILE_SECONDS[1]
        )

    async def persona(self, name: str, principal: Principal) -> PersonaBrief:
        """A persona, "{persona}@{revision}" for a pinned one (a session's `pinned_persona`)."""
        return await self._personas.get(name, lambda: self._profiles.persona(name, principal))

    async def session_persona(self, session: Session, principal: Principal) -> PersonaBrief:
        """The persona revision the session runs on. A pinned revision whose bundle digest is
        not the one the session started with is another persona's (deleted, then made again
        with the same id, its revisions numbered anew): PERSONA_NOT_FOUND, not a silent swap."""
        persona = await self.persona(session.pinned_persona, principal)
        digest = session.persona_bundle_digest
        if session.persona_revision_id and digest and persona.bundle_digest and persona.bundle_digest != digest:
            raise PersonaNotFound(
                "the persona revision this session runs on no longer exists",
                metadata={"persona": session.pinned_persona, "persona_bundle_digest": digest},
            )
        return persona

    async def current_persona(self, name: str, principal: Principal) -> PersonaBrief:
        """The persona as it is now, not as cached: what a new session pins (a persona
        changed moments ago must not start a new session on its revision before)."""
        return await self._profiles.persona(name, principal)

    async def resolve(self, principal: Principal, role: ModelRole, session: Session) -> ResolvedProfile:
        """A role's models for the session (its pinned persona revision, mode and overrides)."""
        overrides = session.model_overrides
        mode, persona = session.mode, session.pinned_persona
        key = (principal.tenant, role, mode, persona, overrides)
        return await self._resolved.get(key, lambda: self._profiles.resolve(principal, role, mode, persona, overrides))

    async def catalogue(self, principal: Principal) -> list[ToolSpec]:
        return await self._catalogue.get(principal.tenant, lambda: self._tools.catalogue(principal))

    async def close(self) -> None:
        for cache in (self._catalogue, self._personas, self._resolved):
            await cache.close()
