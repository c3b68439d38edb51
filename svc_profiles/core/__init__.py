"""svc_profiles's use cases, one module per concern:

- `profiles`: personas, the model registry, tenants' model profiles, and role resolution.
"""

from svc_profiles.core.profiles import Profiles, builtin_persona_of

__all__ = ["Profiles", "builtin_persona_of"]
