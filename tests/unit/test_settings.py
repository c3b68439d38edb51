"""Settings from SKM_* variables: types, defaults, bounds, and errors that name the variable."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from skm_runtime.settings import SettingsError, address, bounded, load_settings


class Mode(enum.Enum):
    DEVELOPER = "developer"
    PRODUCTION = "production"


@dataclass(frozen=True)
class Sample:
    addr: str = address("127.0.0.1:50051")
    workers: int = bounded(4, low=1, high=64)
    ratio: float = 0.5
    verbose: bool = False
    root: Path = Path("/tmp")
    mode: Mode = Mode.DEVELOPER
    origins: tuple[str, ...] = ()
    token: str = field(default="", metadata={"secret": True})


def test_defaults_apply_when_nothing_is_set() -> None:
    assert load_settings(Sample, "demo", {}) == Sample()


def test_values_are_converted_to_their_field_types() -> None:
    env = {
        "SKM_DEMO_ADDR": "[::1]:7000",
        "SKM_DEMO_WORKERS": "8",
        "SKM_DEMO_RATIO": "0.25",
        "SKM_DEMO_VERBOSE": "yes",
        "SKM_DEMO_ROOT": "/srv/skm",
        "SKM_DEMO_MODE": "PRODUCTION",
        "SKM_DEMO_ORIGINS": "http://a, http://b,",
    }
    loaded = load_settings(Sample, "demo", env)
    assert loaded.addr == "[::1]:7000"
    assert (loaded.workers, loaded.ratio, loaded.verbose) == (8, 0.25, True)
    assert loaded.root == Path("/srv/skm")
    assert loaded.mode is Mode.PRODUCTION
    assert loaded.origins == ("http://a", "http://b")


def test_every_bad_value_is_reported_at_once_with_its_variable() -> None:
    env = {
        "SKM_DEMO_ADDR": "nowhere",
        "SKM_DEMO_WORKERS": "100",
        "SKM_DEMO_RATIO": "half",
        "SKM_DEMO_VERBOSE": "maybe",
        "SKM_DEMO_MODE": "chaos",
    }
    with pytest.raises(SettingsError) as raised:
        load_settings(Sample, "demo", env)
    problems = raised.value.problems
    assert problems == [
        "SKM_DEMO_ADDR: expected host:port, got 'nowhere'",
        "SKM_DEMO_WORKERS: expected at most 64, got '100'",
        "SKM_DEMO_RATIO: expected a number, got 'half'",
        "SKM_DEMO_VERBOSE: expected true or false, got 'maybe'",
        "SKM_DEMO_MODE: expected one of developer, production, got 'chaos'",
    ]


def test_secret_values_are_never_echoed() -> None:
    @dataclass(frozen=True)
    class WithSecret:
        port: int = field(default=1, metadata={"secret": True})

    with pytest.raises(SettingsError) as raised:
        load_settings(WithSecret, "demo", {"SKM_DEMO_PORT": "s3cr3t"})
    assert "s3cr3t" not in str(raised.value)
    assert "<secret>" in str(raised.value)


def test_required_fields_must_be_set() -> None:
    @dataclass(frozen=True)
    class Needs:
        dsn: str

    with pytest.raises(SettingsError, match="SKM_DEMO_DSN: required, not set"):
        load_settings(Needs, "demo", {})


def test_bad_port_in_address() -> None:
    with pytest.raises(SettingsError, match="expected a port 0-65535"):
        load_settings(Sample, "demo", {"SKM_DEMO_ADDR": "127.0.0.1:99999"})
