"""svc_profiles's use cases, one module per concern:

- `profiles`: personas, the model registry, tenants' model profiles, and role resolution.
- `tenants`: tenant onboarding (constitution, first admins, tool risk levels, built-in personas'
  permissions).
- `scoring`: the scoring job (benchmark runs, model scores, recommendations, auto mode).
"""

from svc_profiles.core.profiles import Profiles, builtin_persona_of

__all__ = ["Profiles", "builtin_persona_of"]
