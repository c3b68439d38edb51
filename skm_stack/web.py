"""The browser UI's static server: web/dist on 127.0.0.1, plus the page's two dynamic answers.

The page itself talks to the platform only through Envoy (grpc-web, CORS allows localhost
origins). This server hands out the built files and:

- ``GET /config.json``: where Envoy is, and whether the development sign-in exists.
- ``POST /dev/demo-token`` (only when started with a signing key, as ``make run`` does): a
  token for the demo tenant's admin, minted by ``skm token`` with the stack's development key.
  It answers only a request carrying ``x-skm-demo: 1``: a custom header makes any other
  origin's request a CORS preflight, which this server never allows, so only the page it
  serves can ask. Tokens never appear in its log.

Every answer carries a strict Content-Security-Policy (scripts and workers from this origin
only, connections to this origin and Envoy only). Hashed assets are cached for a year;
``index.html`` and ``config.json`` never are.

``python -m skm_stack.web --root web/dist --port 8081 --envoy-url http://127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import os
import subprocess
import sys
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from skm_stack.health import StartError, wait_healthy
from skm_stack.paths import REPO_ROOT
from skm_stack.process import ServerProcess

log = logging.getLogger("skm_stack.web")

WEB_DIR = REPO_ROOT / "web"
DIST_DIR = WEB_DIR / "dist"
DEMO_HEADER = "x-skm-demo"
OIDC_SETTINGS = {
    "SKM_WEB_OIDC_AUTHORIZE_URL": "--oidc-authorize-url",
    "SKM_WEB_OIDC_CLIENT_ID": "--oidc-client-id",
}
# A demo sign-in lasts a working day; `skm token`'s own default (an hour) would sign the
# page out in the middle of a session.
DEMO_TOKEN_TTL_SECONDS = 8 * 3600

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/json", ".map")
mimetypes.add_type("image/svg+xml", ".svg")
mimetypes.add_type("audio/wav", ".wav")


@dataclass(frozen=True)
class WebSettings:
    root: Path
    envoy_url: str
    # The stack's development signing key; None turns the demo sign-in off.
    signing_key: Path | None = None
    demo_user: str = "admin"
    oidc_authorize_url: str = ""
    oidc_client_id: str = ""

    def content_security_policy(self) -> str:
        envoy = urlsplit(self.envoy_url)
        origin = f"{envoy.scheme}://{envoy.netloc}"
        return "; ".join(
            (
                "default-src 'self'",
                f"connect-src 'self' {origin}",
                "script-src 'self'",
                "worker-src 'self' blob:",
                # React and Chart.js set style attributes.
                "style-src 'self' 'unsafe-inline'",
                "img-src 'self' data: blob:",
                "media-src 'self' blob:",
                "object-src 'none'",
                "base-uri 'none'",
                "frame-ancestors 'none'",
                "form-action 'self'",
            )
        )

    def page_config(self) -> dict[str, object]:
        return {
            "envoyUrl": self.envoy_url,
            "demoSignIn": self.signing_key is not None,
            "oidcAuthorizeUrl": self.oidc_authorize_url,
            "oidcClientId": self.oidc_client_id,
        }


class DemoTokenError(RuntimeError):
    """`skm token` could not mint the demo admin's token (its own words)."""


def mint_demo_token(settings: WebSettings) -> str:
    """The demo admin's token, for the tenant's current constitution, as `skm token` makes it."""
    assert settings.signing_key is not None
    argv = [
        sys.executable,
        "-m",
        "skm_cli",
        "--url",
        settings.envoy_url,
        "token",
        "--user",
        settings.demo_user,
        "--role",
        "admin",
        "--key",
        str(settings.signing_key),
        "--ttl",
        str(DEMO_TOKEN_TTL_SECONDS),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise DemoTokenError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "skm token failed")
    return result.stdout.strip()


def _handler(settings: WebSettings) -> type[BaseHTTPRequestHandler]:
    root = settings.root.resolve()
    policy = settings.content_security_policy()

    class Handler(BaseHTTPRequestHandler):
        server_version = "skm-web"
        sys_version = ""

        def log_message(self, format: str, *args: object) -> None:
            # The request line and status only: no headers, so no token ever reaches the log.
            log.info("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str, *, cache: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("Content-Security-Policy", policy)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("X-Frame-Options", "DENY")
            # The microphone for the voice console, nothing else.
            self.send_header("Permissions-Policy", "microphone=(self), camera=(), geolocation=()")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: object) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _file(self, relative: str) -> Path | None:
            candidate = (root / relative.lstrip("/")).resolve()
            if candidate != root and root not in candidate.parents:
                return None
            return candidate if candidate.is_file() else None

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/config.json":
                self._json(HTTPStatus.OK, settings.page_config())
                return
            found = self._file(path) if path not in ("", "/") else None
            if found is None:
                if Path(path).suffix:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no file {path}"})
                    return
                # A path without a file extension is a view of the page.
                found = self._file("index.html")
                if found is None:
                    self._json(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        {"error": f"the UI is not built: no index.html in {root} (run `make setup`)"},
                    )
                    return
            immutable = found.parent.name == "assets"
            content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
            if content_type.startswith("text/") or content_type.endswith("javascript"):
                content_type += "; charset=utf-8"
            cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
            self._send(HTTPStatus.OK, found.read_bytes(), content_type, cache=cache)

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 65536))
            if path != "/dev/demo-token":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path}"})
            elif settings.signing_key is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "the demo sign-in is off: paste a token from `skm token`"})
            elif self.headers.get(DEMO_HEADER) != "1":
                self._json(HTTPStatus.FORBIDDEN, {"error": f"the demo sign-in needs the {DEMO_HEADER} header"})
            else:
                try:
                    self._json(HTTPStatus.OK, {"token": mint_demo_token(settings)})
                except (DemoTokenError, subprocess.TimeoutExpired) as exc:
                    self._json(HTTPStatus.BAD_GATEWAY, {"error": f"could not mint the demo token: {exc}"})

        def do_OPTIONS(self) -> None:
            # No CORS here: another origin may not ask for anything.
            self._json(HTTPStatus.FORBIDDEN, {"error": "cross-origin requests are not served"})

    return Handler


def make_server(settings: WebSettings, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _handler(settings))
    server.daemon_threads = True
    return server


@dataclass
class WebServer:
    """The running static server; ``url`` is where a person opens the UI."""

    process: ServerProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.process.stop()


def probe_config(url: str) -> None:
    """Raise unless the web server at ``url`` (ending in /) answers ``/config.json``."""
    httpx.get(f"{url}config.json", timeout=2.0).raise_for_status()


def start_web(
    state_dir: Path,
    port: int,
    envoy_url: str,
    *,
    signing_key: Path | None,
    root: Path = DIST_DIR,
    timeout: float = 20.0,
) -> WebServer:
    """Start ``python -m skm_stack.web`` and wait until it answers ``/config.json``."""
    if not (root / "index.html").is_file():
        raise StartError("web", f"the browser UI is not built ({root / 'index.html'} is missing): run `make setup`", "")
    argv = [sys.executable, "-m", "skm_stack.web", "--root", str(root), "--port", str(port), "--envoy-url", envoy_url]
    if signing_key is not None:
        argv += ["--signing-key", str(signing_key)]
    # A deployment's identity provider (README: the browser UI, OIDC); off by default.
    for variable, flag in OIDC_SETTINGS.items():
        if os.environ.get(variable):
            argv += [flag, os.environ[variable]]
    process = ServerProcess("web", argv, state_dir=state_dir, cwd=REPO_ROOT)
    server = WebServer(process, port)
    try:
        wait_healthy(
            process,
            lambda: probe_config(server.url),
            timeout=timeout,
            what="/config.json",
        )
    except BaseException:
        process.stop()
        raise
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skm_stack.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DIST_DIR, help="the built UI (default web/dist)")
    parser.add_argument("--port", type=int, default=8081, help="port on 127.0.0.1 (default 8081)")
    parser.add_argument("--envoy-url", default="http://127.0.0.1:8080", help="the platform's public entry")
    parser.add_argument("--signing-key", type=Path, help="development signing key: turns the demo sign-in on")
    parser.add_argument("--oidc-authorize-url", default="", help="a deployment's OIDC authorize endpoint")
    parser.add_argument("--oidc-client-id", default="", help="the UI's OIDC client id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = WebSettings(
        root=args.root,
        envoy_url=args.envoy_url.rstrip("/"),
        signing_key=args.signing_key,
        oidc_authorize_url=args.oidc_authorize_url,
        oidc_client_id=args.oidc_client_id,
    )
    server = make_server(settings, args.port)
    log.info("serving %s on http://127.0.0.1:%d/", settings.root, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
