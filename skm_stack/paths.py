"""Where the local stack keeps its tools, downloads and server state.

Every path is derived from the repository root (the folder holding this package), so no
committed file names an absolute path. Two environment variables move them elsewhere:
``SKM_STACK_CACHE_DIR`` (installed tools and downloads) and ``SKM_STACK_STATE_DIR`` (the
default state dir of ``python -m skm_stack up``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Folder for installed tools and downloads (git-ignored ``.cache``)."""
    return Path(os.environ.get("SKM_STACK_CACHE_DIR") or REPO_ROOT / ".cache")


def default_state_dir() -> Path:
    """State dir used by the CLI when ``--state-dir`` is not given (git-ignored ``.state/run``)."""
    return Path(os.environ.get("SKM_STACK_STATE_DIR") or REPO_ROOT / ".state" / "run")


def deploy_dir() -> Path:
    """Committed configuration templates (Envoy, Kafka pom, OpenFGA model)."""
    return REPO_ROOT / "deploy"
