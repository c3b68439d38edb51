"""The model installer against the real package index: fetch, verify, repair, refuse.

Each test installs into a cache of its own (SKM_STACK_CACHE_DIR) the catalogue's smallest
asset, Silero VAD (1.2 MB, from the 1.1 MB faster-whisper wheel), so what is checked is
what a fresh machine does: pip download, join, hash, rename.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from skm_stack.catalogue import AssetError, find_asset, install_asset, problems_of

pytestmark = pytest.mark.timeout(180)

ASSET = "silero-vad-v6"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKM_STACK_CACHE_DIR", str(tmp_path))
    return tmp_path


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".partial"))


def test_an_asset_is_fetched_verified_and_then_trusted_by_its_stamp(cache: Path) -> None:
    entry = find_asset(ASSET)
    assert problems_of(entry) == {"silero_vad_v6.onnx": "missing"}
    messages: list[str] = []
    install_asset(entry, messages.append)
    path = entry.path()
    assert path.is_relative_to(cache)
    assert path.stat().st_size == entry.files[0].size
    assert problems_of(entry, full=True) == {}
    assert any("sha256 verified" in m for m in messages)
    # Nothing of the download is left, and a second install does nothing.
    assert not (cache / "models" / ".downloads" / ASSET).exists()
    messages.clear()
    assert install_asset(entry, messages.append) == 0.0
    assert messages == []


def test_a_truncated_or_corrupted_file_is_detected_and_fetched_again(cache: Path) -> None:
    entry = find_asset(ASSET)
    install_asset(entry, lambda _: None)
    path = entry.path()
    good = path.read_bytes()

    with path.open("r+b") as handle:
        handle.truncate(len(good) // 2)
    assert "size" in problems_of(entry)["silero_vad_v6.onnx"]
    messages: list[str] = []
    install_asset(entry, messages.append)
    assert path.read_bytes() == good
    assert any("damaged" in m for m in messages)

    # Same size, one byte changed: the stat no longer matches the stamp, so it is hashed.
    with path.open("r+b") as handle:
        handle.seek(1000)
        handle.write(bytes([good[1000] ^ 0xFF]))
    assert "sha256" in problems_of(entry)["silero_vad_v6.onnx"]
    install_asset(entry, lambda _: None)
    assert path.read_bytes() == good


def test_corruption_that_keeps_the_files_stat_is_found_by_a_full_verify(cache: Path) -> None:
    entry = find_asset(ASSET)
    install_asset(entry, lambda _: None)
    path = entry.path()
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek(2000)
        byte = handle.read(1)
        handle.seek(2000)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert problems_of(entry) == {}  # the cheap check trusts the stamp...
    assert "sha256" in problems_of(entry, full=True)["silero_vad_v6.onnx"]  # ...a full verify does not


def test_a_package_that_is_not_the_one_pinned_is_refused_and_nothing_is_kept(cache: Path) -> None:
    entry = find_asset(ASSET)
    wrong = dataclasses.replace(entry.files[0], sha256="0" * 64)
    forged = dataclasses.replace(entry, files=(wrong,))
    with pytest.raises(AssetError) as refused:
        install_asset(forged, lambda _: None)
    assert "does not match the catalogue" in str(refused.value)
    assert entry.files[0].sha256 in str(refused.value)  # what it got, beside what was pinned
    assert not entry.path().exists()
    assert _leftovers(cache) == []
    assert not (cache / "models" / ".downloads" / ASSET).exists()


def test_a_package_the_index_does_not_have_is_a_clear_error(cache: Path) -> None:
    entry = find_asset(ASSET)
    missing = dataclasses.replace(entry, packages=("faster-whisper==0.0.0",))
    with pytest.raises(AssetError) as refused:
        install_asset(missing, lambda _: None)
    assert "pip could not download faster-whisper==0.0.0" in str(refused.value)
    assert not entry.path().exists()
