"""What a turn needs from svc_profiles and svc_tools, cached: personas, the models a role
resolves to for a session, and the tool catalogue.

Answers are used as they are while fresh, then refreshed off the turn's path until stale
(refresh.py): a change made elsewhere reaches turns within seconds, and a turn never
waits for an answer another one had moments ago.
"""

from __future__ import annotations

from skm_runtime.access import Principal
from skm_runtime.values import DeploymentMode, ModelOverride, ModelRole
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
        return await self._personas.get(name, lambda: self._profiles.persona(name, principal))

    async def resolve(self, principal: Principal, role: ModelRole, session: Session) -> ResolvedProfile:
        """A role's models for the session (its persona, mode and overrides)."""
        overrides = session.model_overrides
        mode, persona = session.mode, session.persona
        key = (principal.tenant, role, mode, persona, overrides)
        return await self._resolved.get(key, lambda: self._profiles.resolve(principal, role, mode, persona, overrides))

    async def catalogue(self, principal: Principal) -> list[ToolSpec]:
        return await self._catalogue.get(principal.tenant, lambda: self._tools.catalogue(principal))

    async def close(self) -> None:
        for cache in (self._catalogue, self._personas, self._resolved):
            await cache.close()
