"""skm_stack.web, the browser UI's static server, on 127.0.0.1:0 over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skm_stack.web import WebSettings, make_server


def _serve(settings: WebSettings) -> Iterator[str]:
    server = make_server(settings, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>SKM</title>")
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log(1)")
    (tmp_path.parent / "secret.txt").write_text("not for the web")
    return tmp_path


@pytest.fixture
def base(site: Path) -> Iterator[str]:
    yield from _serve(WebSettings(root=site, envoy_url="http://127.0.0.1:8080"))


def test_the_page_and_its_assets_are_served_with_a_strict_policy(base: str) -> None:
    page = httpx.get(f"{base}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self' http://127.0.0.1:8080" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    asset = httpx.get(f"{base}/assets/index-abc123.js")
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith("text/javascript")
    assert "immutable" in asset.headers["cache-control"]


def test_a_view_path_gets_the_page_and_a_missing_file_a_404(base: str) -> None:
    assert httpx.get(f"{base}/sessions/abc").text.startswith("<!doctype html>")
    missing = httpx.get(f"{base}/assets/nope.js")
    assert missing.status_code == 404
    assert "no file" in missing.json()["error"]


def test_nothing_outside_the_root_is_served(base: str) -> None:
    with httpx.Client() as client:
        request = client.build_request("GET", f"{base}/../secret.txt")
        request.url = request.url.copy_with(raw_path=b"/../secret.txt")
        answer = client.send(request)
    assert answer.status_code == 404
    assert "not for the web" not in answer.text


def test_the_config_names_envoy_and_no_demo_sign_in_without_a_key(base: str) -> None:
    config = httpx.get(f"{base}/config.json").json()
    assert config == {
        "envoyUrl": "http://127.0.0.1:8080",
        "demoSignIn": False,
        "oidcAuthorizeUrl": "",
        "oidcClientId": "",
    }
    refused = httpx.post(f"{base}/dev/demo-token", headers={"x-skm-demo": "1"})
    assert refused.status_code == 404
    assert "off" in refused.json()["error"]


def test_the_demo_sign_in_needs_its_header_and_no_other_origin_may_ask(site: Path, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("unused: the header check comes first")
    for base in _serve(WebSettings(root=site, envoy_url="http://127.0.0.1:8080", signing_key=key)):
        assert httpx.get(f"{base}/config.json").json()["demoSignIn"] is True
        plain = httpx.post(f"{base}/dev/demo-token")
        assert plain.status_code == 403
        assert "x-skm-demo" in plain.json()["error"]
        preflight = httpx.options(
            f"{base}/dev/demo-token",
            headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 403
        assert "access-control-allow-origin" not in preflight.headers
