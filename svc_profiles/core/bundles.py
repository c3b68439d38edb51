"""Persona bundles: a tenant's trusted publisher keys, and the installing, upgrading, rolling
back and uninstalling of personas signed with them.

An install is refused, with nothing stored and nothing written in svc_policy, unless the
bundle file is well formed, names a key the tenant trusts, that key has not expired (by
this service's clock, at install time), the signature verifies over the payload's exact bytes,
the payload is a valid persona, and its version is above the one installed. Each refusal is
an audit event (PersonaBundleRefused) with the refusal's reason: the only thing a refusal
writes.

What an install writes, in this order, so that a failure leaves no more permissions than
before and a retry finishes the job:

1. svc_policy: the new version's relationships (tools `persona_user`, shared memory
   namespaces `persona_reader` / `persona_writer`), then the deletion of those the installed
   version had and the new one lacks. If svc_policy fails, nothing is stored (what step 1
   wrote is taken back).
2. the persona, as a new revision (origin BUNDLE_INSTALL, the version in its note), through
   `Profiles.revise_persona`, the one write of every persona change.
3. the install record (version, key, digest, relationships written) and PersonaBundleInstalled,
   in one transaction. A crash between 2 and 3 leaves a persona signed by a trusted key and
   no record; installing the same bundle again finishes it (such a persona counts as
   installed from a bundle).

How an installed persona counts as signed: its `signing_key` is the trusted key's resource
name, "tenants/{t}/trustedKeys/{id}", and its `signature` the bundle's (over the payload,
which verified before the persona was stored). Create and Update cannot set such a key
(no signature over a digest verifies with it, see adapters.bundle_keys), so only an install
makes one; deleting the key later leaves the persona installed and signed, as the contract
says of DeleteTrustedKey.

Memory: the private area "main" is each user's own namespace ("tenants/t/users/u/
memoryNamespaces/main"), which a bundle cannot name for users it does not know; only shared
areas become relationships.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation, SkmError
from svc_profiles import bundle_file, checks
from svc_profiles.bundle import bundle_digest
from svc_profiles.errors import (
    BundleKeyExpired,
    BundleKeyNotTrusted,
    BundleMalformed,
    BundleSignatureInvalid,
    BundleVersionNotNewer,
    EtagMismatch,
    InvalidPageToken,
    InvalidPersona,
    InvalidTrustedKey,
    ModelNotFound,
    PersonaNotFound,
    PersonaNotFromBundle,
    ProfilesError,
    RequestIdReused,
    TrustedKeyAlreadyExists,
    TrustedKeyNotFound,
)
from svc_profiles.model import (
    BundleInstalled,
    BundlePermissions,
    BundleRefused,
    InstalledBundle,
    Persona,
    Relationship,
    RevisionOrigin,
    TrustedKey,
)
from svc_profiles.ports import BundleStore, TenantPolicy

from .profiles import Profiles
from .revisions import author_of

KEY_PAGE = 50
MAX_KEY_DISPLAY_NAME_CHARS = 200
PRIVATE_AREA = "main"
INSTALL_NOTE = "bundle version {version}, key {key_id}"

# Refusals of an install that are audited (PersonaBundleRefused). A database or svc_policy
# outage is no refusal of the bundle: it is retried, not audited.
_REFUSALS = (
    BundleMalformed,
    BundleSignatureInvalid,
    BundleKeyNotTrusted,
    BundleKeyExpired,
    BundleVersionNotNewer,
    PersonaNotFromBundle,
    InvalidPersona,
    ModelNotFound,
    RequestIdReused,
)


def trusted_key_name(tenant: str, key_id: str) -> str:
    return f"{tenant}/trustedKeys/{key_id}"


def relationships_of(persona: str, permissions: BundlePermissions) -> tuple[Relationship, ...]:
    """The svc_policy relationships a bundle's permissions grant its persona."""
    tenant = "/".join(persona.split("/")[:2])
    subject = f"persona:{persona}"
    out = [Relationship(subject, "persona_user", f"tool:{tenant}/tools/{tool}") for tool in permissions.tools]
    for relation, areas in (("persona_reader", permissions.memory_read), ("persona_writer", permissions.memory_write)):
        out += [
            Relationship(subject, relation, f"memory_namespace:{tenant}/memoryNamespaces/{area}")
            for area in areas
            if area != PRIVATE_AREA
        ]
    return tuple(dict.fromkeys(out))


@dataclass(slots=True)
class _Attempt:
    """What an install has learnt of its bundle so far, for the refusal's audit event."""

    key_id: str = ""
    persona: str = ""
    version: int = 0


class Bundles:
    """Trusted keys and persona bundles, over the persona use cases (every persona write is
    a revision made by `Profiles.revise_persona`), the bundle store and svc_policy."""

    def __init__(
        self, profiles: Profiles, store: BundleStore, policy: TenantPolicy, *, now: Callable[[], datetime]
    ) -> None:
        self._profiles = profiles
        self._store = store
        self._policy = policy
        self._now = now

    # -- trusted keys ------------------------------------------------------------------------

    async def create_trusted_key(
        self, parent: str, key_id: str, key: TrustedKey, principal: Principal | None
    ) -> TrustedKey:
        tenant = checks.tenant_of_parent(parent)
        _own(tenant, principal, _tenant_not_yours(tenant))
        now = self._now()
        violations: list[FieldViolation] = []
        if not bundle_file.is_key_id(key_id):
            violations.append(FieldViolation("trusted_key_id", "1-63 characters of [a-z0-9-], starting with a letter"))
        if len(key.public_key) != bundle_file.PUBLIC_KEY_BYTES:
            violations.append(FieldViolation("trusted_key.public_key", "the 32 raw bytes of an Ed25519 public key"))
        if key.expire_time is None:
            violations.append(FieldViolation("trusted_key.expire_time", "required"))
        elif key.expire_time <= now:
            violations.append(FieldViolation("trusted_key.expire_time", "in the past"))
        if len(key.display_name) > MAX_KEY_DISPLAY_NAME_CHARS:
            violations.append(FieldViolation("trusted_key.display_name", "at most 200 characters"))
        if violations:
            raise InvalidTrustedKey("the trusted key is invalid", violations=violations)
        stored = dataclasses.replace(key, name=trusted_key_name(tenant, key_id), create_time=now)
        if not await self._store.insert_trusted_key(stored):
            raise TrustedKeyAlreadyExists("the tenant trusts a key with this id", metadata={"trusted_key": stored.name})
        return stored

    async def list_trusted_keys(
        self, parent: str, page_size: int, page_token: str, principal: Principal | None
    ) -> tuple[list[TrustedKey], str]:
        tenant = checks.tenant_of_parent(parent)
        _own(tenant, principal, _tenant_not_yours(tenant))
        size = checks.page_size_of(page_size, KEY_PAGE)
        scope = f"trustedKeys|{tenant}"
        after = checks.position_of(page_token, scope)
        if after is not None and not isinstance(after, str):
            raise InvalidPageToken("page_token is not one this service issued")
        found = await self._store.list_trusted_keys(tenant, after or "", size + 1)
        page = found[:size]
        return page, checks.token_of(scope, page[-1].key_id) if len(found) > size else ""

    async def delete_trusted_key(self, name: str, principal: Principal | None) -> None:
        tenant, _ = checks.split_child(name, "trustedKeys")
        _own(tenant, principal, _key_not_found(name))
        if not await self._store.delete_trusted_key(name):
            raise _key_not_found(name)

    # -- export ------------------------------------------------------------------------------

    async def export_bundle(self, name: str, version: int, key_id: str, principal: Principal | None) -> bytes:
        """The payload of a persona (or one revision, "{name}@{revision_id}") to be signed by
        its publisher: the private key never reaches this service."""
        violations = []
        if version <= 0:
            violations.append(FieldViolation("version", "above 0: above every version released before"))
        if not bundle_file.is_key_id(key_id):
            violations.append(FieldViolation("key_id", "1-63 characters of [a-z0-9-], starting with a letter"))
        if violations:
            raise InvalidPersona("the export request is invalid", violations=violations)
        persona = await self._profiles.get_persona(name, principal)
        return bundle_file.payload_of(persona, version, key_id, self._now())

    # -- install -----------------------------------------------------------------------------

    async def install_bundle(
        self, parent: str, data: bytes, request_id: str, principal: Principal | None, *, author: str = ""
    ) -> Persona:
        tenant = checks.tenant_of_parent(parent)
        _own(tenant, principal, _persona_not_found(parent))
        attempt = _Attempt()
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            return await self._install(tenant, data, request_id, author_of(principal, author), attempt)
        except _REFUSALS as refusal:
            await self._store.record_refusal(
                BundleRefused(
                    tenant=tenant,
                    reason=refusal.reason,
                    key_id=attempt.key_id,
                    bundle_sha256=sha256,
                    at=self._now(),
                    persona=attempt.persona,
                    version=attempt.version,
                )
            )
            raise

    async def _install(self, tenant: str, data: bytes, request_id: str, author: str, attempt: _Attempt) -> Persona:
        violations = checks.check_request_id(request_id, "request_id")
        if violations:
            raise InvalidPersona("the install request is invalid", violations=violations)
        signed = bundle_file.read_signed(data)
        attempt.key_id = signed.key_id
        if request_id:
            earlier = await self._store.install_by_request(tenant, request_id)
            if earlier is not None:
                persona_name, earlier_sha = earlier
                if earlier_sha != signed.sha256:
                    raise RequestIdReused(
                        "this request_id was used before for a different bundle", metadata={"request_id": request_id}
                    )
                return await self._profiles.get_persona(persona_name, None)
        key = await self._store.get_trusted_key(trusted_key_name(tenant, signed.key_id))
        if key is None:
            raise BundleKeyNotTrusted(
                "the bundle's key is not among the tenant's trusted keys", metadata={"key_id": signed.key_id}
            )
        bundle_file.verify(signed, key.public_key)
        now = self._now()
        if key.expire_time is None or key.expire_time <= now:
            raise BundleKeyExpired(
                "the bundle's key expired",
                metadata={
                    "key_id": signed.key_id,
                    "expire_time": key.expire_time.isoformat() if key.expire_time else "",
                },
            )
        payload = bundle_file.read_payload(signed, tenant)
        attempt.persona, attempt.version = payload.persona.name, payload.version
        candidate = dataclasses.replace(
            payload.persona,
            signature=signed.signature,
            signing_key=key.name,
            bundle_version=payload.version,
        )
        problems = checks.persona_violations(candidate, tenant)
        if problems:
            raise InvalidPersona("the bundle's persona is invalid", violations=problems)
        await self._profiles.check_preferences(candidate)
        candidate = dataclasses.replace(candidate, bundle_digest=bundle_digest(candidate))

        current = await self._current(candidate.name)
        installed = await self._store.installed_bundle(candidate.name)
        if current is not None and installed is None and not _signed_by_tenant_key(current):
            raise PersonaNotFromBundle(
                "the tenant has a persona with this id that was not installed from a bundle",
                metadata={"persona": candidate.name},
            )
        previous_version = installed.version if installed is not None else 0
        if payload.version <= previous_version:
            raise BundleVersionNotNewer(
                "the bundle's version is not above the installed one",
                metadata={"version": str(payload.version), "installed_version": str(previous_version)},
            )
        wanted = relationships_of(candidate.name, payload.permissions)
        had = installed.relationships if installed is not None else ()

        async def store() -> Persona:
            stored = await self._profiles.revise_persona(
                current,
                candidate,
                RevisionOrigin.BUNDLE_INSTALL,
                author,
                INSTALL_NOTE.format(version=payload.version, key_id=signed.key_id),
            )
            revision_id = stored.revision.revision_id if stored.revision is not None else ""
            await self._store.record_install(
                InstalledBundle(
                    persona=stored.name,
                    version=payload.version,
                    key_id=signed.key_id,
                    bundle_digest=stored.bundle_digest,
                    permissions=payload.permissions,
                    relationships=wanted,
                    install_time=now,
                ),
                BundleInstalled(
                    persona=stored.name,
                    version=payload.version,
                    previous_version=previous_version,
                    key_id=signed.key_id,
                    bundle_digest=stored.bundle_digest,
                    revision_id=revision_id,
                    at=now,
                ),
                request_id,
                signed.sha256,
            )
            return dataclasses.replace(stored, bundle_version=payload.version)

        return await self._with_relationships(tenant, had, wanted, store)

    # -- uninstall and rollback --------------------------------------------------------------

    async def uninstall_persona(self, name: str, etag: str, principal: Principal | None) -> None:
        """Delete the persona, its revisions, and every relationship its installs wrote."""
        tenant, _ = checks.split_persona(name)
        _own(tenant, principal, _persona_not_found(name))
        current = await self._current(name)
        if current is None:
            raise _persona_not_found(name)
        installed = await self._store.installed_bundle(name)
        if installed is None and not _signed_by_tenant_key(current):
            raise PersonaNotFromBundle("the persona was not installed from a bundle", metadata={"persona": name})
        if etag and etag != current.etag:
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": name})
        written = installed.relationships if installed is not None else ()
        # Relationships first: a persona that cannot be deleted after them is deleted by a
        # retry, while the reverse order could leave permissions behind with no persona.
        await self._policy.delete_relationships(tenant, list(written))
        await self._profiles.delete_persona(name, etag, principal)
        await self._store.forget_installs(name)

    async def rollback_persona(
        self, name: str, revision_id: str, etag: str, principal: Principal | None, *, author: str = ""
    ) -> Persona:
        """RollbackPersona: a persona installed from a bundle also gets back the relationships
        of the install that made that revision's bundle; any other persona is rolled back by
        `Profiles` alone."""
        tenant, _ = checks.split_persona(name)
        _own(tenant, principal, _persona_not_found(name))
        installed = await self._store.installed_bundle(name)
        if installed is None:
            return await self._profiles.rollback_persona(name, revision_id, etag, principal, author=author)
        earlier = await self._profiles.get_persona(f"{name}@{revision_id}", principal)
        target = await self._store.bundle_with_digest(name, earlier.bundle_digest)
        if target is None or target.relationships == installed.relationships:
            return await self._profiles.rollback_persona(name, revision_id, etag, principal, author=author)
        chosen = target

        async def store() -> Persona:
            rolled = await self._profiles.rollback_persona(name, revision_id, etag, principal, author=author)
            await self._store.record_install(
                dataclasses.replace(chosen, bundle_digest=rolled.bundle_digest, install_time=self._now()), None, "", ""
            )
            return dataclasses.replace(rolled, bundle_version=chosen.version)

        return await self._with_relationships(tenant, installed.relationships, target.relationships, store)

    # -- helpers -----------------------------------------------------------------------------

    async def _with_relationships(
        self,
        tenant: str,
        had: Sequence[Relationship],
        wanted: Sequence[Relationship],
        store: Callable[[], Awaitable[Persona]],
    ) -> Persona:
        """Move svc_policy from `had` to `wanted`, then `store()`; when either fails, put
        svc_policy back as it was (best effort) and raise."""
        added = [r for r in wanted if r not in had]
        stale = [r for r in had if r not in wanted]
        await self._policy.write_relationships(tenant, list(wanted))
        try:
            await self._policy.delete_relationships(tenant, stale)
            return await store()
        except BaseException:
            await self._restore(tenant, added, stale)
            raise

    async def _restore(self, tenant: str, added: Sequence[Relationship], stale: Sequence[Relationship]) -> None:
        try:
            await self._policy.delete_relationships(tenant, list(added))
            await self._policy.write_relationships(tenant, list(stale))
        except SkmError:
            # svc_policy is down as well: what stays written is what a retry writes again.
            pass

    async def _current(self, name: str) -> Persona | None:
        """The persona of that name if the tenant has one (built-in ones count, so that an
        install replacing one is refused as not from a bundle)."""
        try:
            return await self._profiles.get_persona(name, None)
        except PersonaNotFound:
            return None


def _signed_by_tenant_key(persona: Persona) -> bool:
    return persona.signing_key.startswith(f"{persona.tenant}/trustedKeys/")


def _own(tenant: str, principal: Principal | None, not_found: ProfilesError) -> None:
    if principal is not None and principal.tenant and principal.tenant != tenant:
        raise not_found


def _tenant_not_yours(tenant: str) -> ProfilesError:
    """Another tenant's keys and personas do not exist for a caller (admission refuses such
    calls first; this holds for calls from inside the mesh with a principal)."""
    return TrustedKeyNotFound("no such tenant for this caller", metadata={"tenant": tenant[:200]})


def _persona_not_found(name: str) -> PersonaNotFound:
    return PersonaNotFound("no such persona", metadata={"persona": name[:200]})


def _key_not_found(name: str) -> TrustedKeyNotFound:
    return TrustedKeyNotFound("no such trusted key", metadata={"trusted_key": name[:200]})
