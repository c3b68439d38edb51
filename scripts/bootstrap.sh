#!/usr/bin/env bash
# Installs everything the project needs, idempotently, caching under .cache/ (git-ignored):
# uv (pinned) -> .venv from uv.lock -> web/node_modules from package-lock.json -> the real
# servers of the local stack (Debian packages, Kafka jars, OpenFGA built with Go), and the
# browser UI built into web/dist.
# Usage: scripts/bootstrap.sh [--python-only]
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
export UV_CACHE_DIR="$PWD/.cache/uv" UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy

if [ ! -x .cache/bootstrap/bin/uv ] || [ "$(.cache/bootstrap/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "==> installing uv $UV_VERSION into .cache/bootstrap"
  python3 -m venv .cache/bootstrap
  .cache/bootstrap/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

echo "==> Python environment (.venv, from uv.lock)"
.cache/bootstrap/bin/uv sync --frozen --quiet

if [ "${1:-}" != "--python-only" ]; then
  if [ ! -d web/node_modules ] || ! cmp -s web/package-lock.json web/node_modules/.package-lock.json.skm 2>/dev/null; then
    echo "==> web tooling (npm: buf, protoc-gen-es, connect-web; versions from package-lock.json)"
    # `npm install`, not `npm ci`: npm 11 leaves other platforms' optional packages of
    # @bufbuild/buf out of the lock file, and `npm ci` then refuses it as out of sync.
    (cd web && npm install --no-audit --no-fund --loglevel=error)
    cp web/package-lock.json web/node_modules/.package-lock.json.skm
  fi
  # The browser UI (web/dist, served by `make run`), rebuilt only when its sources changed.
  ui_hash=$(cd web && find src public index.html vite.config.ts tsconfig.json package-lock.json -type f -print0 2>/dev/null \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
  if [ ! -f web/dist/index.html ] || [ "$(cat web/dist/.source-hash 2>/dev/null)" != "$ui_hash" ]; then
    echo "==> browser UI (vite build into web/dist)"
    (cd web && npm run --silent build -- --logLevel warn)
    echo "$ui_hash" > web/dist/.source-hash
  fi
  echo "==> real servers of the local stack"
  .venv/bin/python -m skm_stack install
fi
