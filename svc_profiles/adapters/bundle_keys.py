"""The persona keys svc_profiles checks persona signatures with once tenants may install
bundles: the deployment's keys, plus the tenant trusted keys that signed installed personas.

An installed persona's `signing_key` is its tenant's trusted key resource name,
"tenants/{t}/trustedKeys/{id}", and its signature is the bundle's, over the bundle payload
that InstallPersonaBundle verified before storing it (svc_profiles.core.bundles). Such a key
is therefore trusted for showing a persona signed, but no signature over a persona digest
ever verifies with it: CreatePersona and UpdatePersona cannot claim it, only an install
makes one.
"""

from __future__ import annotations

from svc_profiles.ports import PersonaKeys


def is_tenant_key_name(key_id: str) -> bool:
    """ "tenants/{t}/trustedKeys/{id}": a tenant's key, never a deployment key id (those have
    no slash)."""
    parts = key_id.split("/")
    return len(parts) == 4 and parts[0] == "tenants" and parts[2] == "trustedKeys" and all(parts)


class BundleAwarePersonaKeys:
    """The deployment's keys (ports.PersonaKeys), with tenants' bundle keys shown as trusted."""

    def __init__(self, deployment: PersonaKeys) -> None:
        self._deployment = deployment

    def is_trusted(self, key_id: str) -> bool:
        return is_tenant_key_name(key_id) or self._deployment.is_trusted(key_id)

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        if is_tenant_key_name(key_id):
            return False
        return self._deployment.verify(key_id, signature, message)
