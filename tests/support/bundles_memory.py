"""An in-memory ports.BundleStore for the core's unit tests, behaving as PostgresBundleStore:
trusted keys by (tenant, id), each persona's current install and its history, and the
events an install or a refusal writes (`installed`, `refused`). `reachable` False makes
every call fail as the database adapter does when Postgres cannot be reached."""

from __future__ import annotations

import dataclasses

from skm_runtime.errors import ServiceUnavailable
from svc_profiles.model import BundleInstalled, BundleRefused, InstalledBundle, TrustedKey


class MemoryBundleStore:
    def __init__(self) -> None:
        self.keys: dict[str, TrustedKey] = {}
        self.current: dict[str, InstalledBundle] = {}
        self.history: list[tuple[InstalledBundle, str, str]] = []
        self.installed: list[BundleInstalled] = []
        self.refused: list[BundleRefused] = []
        self.reachable = True
        # Makes the next record_install fail as a lost database would (after svc_policy was written).
        self.fail_record_install = False

    def _check(self) -> None:
        if not self.reachable:
            raise ServiceUnavailable("the profile service's database cannot be reached")

    async def insert_trusted_key(self, key: TrustedKey) -> bool:
        self._check()
        if key.name in self.keys:
            return False
        self.keys[key.name] = key
        return True

    async def get_trusted_key(self, name: str) -> TrustedKey | None:
        self._check()
        return self.keys.get(name)

    async def list_trusted_keys(self, tenant: str, after: str, limit: int) -> list[TrustedKey]:
        self._check()
        mine = sorted((k for k in self.keys.values() if k.name.startswith(f"{tenant}/")), key=lambda k: k.key_id)
        return [k for k in mine if k.key_id > after][:limit]

    async def delete_trusted_key(self, name: str) -> bool:
        self._check()
        return self.keys.pop(name, None) is not None

    async def installed_bundle(self, persona: str) -> InstalledBundle | None:
        self._check()
        return self.current.get(persona)

    async def bundle_with_digest(self, persona: str, bundle_digest: str) -> InstalledBundle | None:
        self._check()
        found = [i for i, _, _ in self.history if i.persona == persona and i.bundle_digest == bundle_digest]
        return found[-1] if found else None

    async def install_by_request(self, tenant: str, request_id: str) -> tuple[str, str] | None:
        self._check()
        for installed, request, sha in self.history:
            if request and request == request_id and installed.persona.startswith(f"{tenant}/"):
                return installed.persona, sha
        return None

    async def record_install(
        self, installed: InstalledBundle, event: BundleInstalled | None, request_id: str, bundle_sha256: str
    ) -> None:
        self._check()
        if self.fail_record_install:
            self.fail_record_install = False
            raise ServiceUnavailable("the profile service's database cannot be reached")
        self.current[installed.persona] = installed
        if not (request_id and any(r == request_id for _, r, _ in self.history)):
            self.history.append((dataclasses.replace(installed), request_id, bundle_sha256))
        if event is not None:
            self.installed.append(event)

    async def record_refusal(self, refused: BundleRefused) -> None:
        self._check()
        self.refused.append(refused)

    async def forget_installs(self, persona: str) -> None:
        self._check()
        self.current.pop(persona, None)
        self.history = [h for h in self.history if h[0].persona != persona]
