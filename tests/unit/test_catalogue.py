"""The model catalogue file: complete, consistent with the deployment defaults, checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from skm_stack.catalogue import CATALOGUE_FILE, AssetError, load_catalogue, real_llms
from svc_profiles.adapters.defaults import load_defaults
from svc_profiles.settings import DEFAULTS_FILE


def test_every_asset_names_its_source_licence_and_whether_it_is_real() -> None:
    catalogue = load_catalogue()
    roles = {entry.role for entry in catalogue}
    assert {"llm", "asr", "tts", "vad", "turn", "embedding"} <= roles
    for entry in catalogue:
        assert entry.licence
        assert entry.description
        if entry.source == "wheels":
            assert entry.trained, "fetched models are real; fixtures are built by the project"
            assert (CATALOGUE_FILE.parent / entry.licence_file).is_file()
            assert all("==" in package for package in entry.packages)
            assert all(item.size > 0 and len(item.sha256) == 64 for item in entry.files)
    untrained = [entry.id for entry in catalogue if not entry.trained]
    assert untrained == ["skm-tiny-untrained", "skm-tiny-untrained-large"]


def test_the_real_llms_are_the_deployment_defaults_models_in_tier_order() -> None:
    llms = real_llms()
    assert [entry.tier for entry in llms] == list(range(len(llms)))
    assert llms[0].id == "qwen2.5-coder-0.5b-instruct"
    defaults = load_defaults(DEFAULTS_FILE, {"SKM_LLM_URL": "http://127.0.0.1:1/v1"})
    served = {model.served_model: model for model in defaults.models}
    for entry in llms:
        assert entry.alias in served, f"deploy/profiles/defaults.yaml does not register {entry.alias}"
        assert "REAL" in served[entry.alias].display_name
    primary = next(d for d in defaults.role_defaults if d.role.name == "PRIMARY" and d.mode is None)
    assert primary.model_tiers[0] == served[llms[0].alias].name


def test_a_broken_catalogue_lists_every_problem(tmp_path: Path) -> None:
    broken = tmp_path / "catalogue.toml"
    broken.write_text(
        """
[[asset]]
id = "x"
role = "singer"
trained = true
source = "wheels"
description = "d"
licence = "MIT"
packages = ["unpinned"]
[[asset.file]]
name = "../escape"
size = 1
sha256 = "abc"
pieces = ["other:member"]
"""
    )
    with pytest.raises(AssetError) as invalid:
        load_catalogue(broken)
    text = str(invalid.value)
    for problem in ("role: one of", "packages: each pinned", "pieces[0]", "sha256: 64", "name: a plain file name"):
        assert problem in text
