"""Fixtures for tests that need a real service: a PostgreSQL server and headless Chromium.

`bash tests/services/start.sh` (run by `make test`) starts them and writes their addresses to
.cxr-sweep/services/env. A test whose service is missing is skipped, or fails when
CXR_SWEEP_REQUIRE_SERVICES=1 (CI), so a broken service can never pass CI as "skipped".

    engine_url   -> str: SQLAlchemy URL of a fresh, empty database; ids [sqlite] and [postgresql]
    render_html  -> render(html_path, screenshot_path) -> PageFacts
"""
from __future__ import annotations

import html
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START = "bash tests/services/start.sh"


def _service(var: str, what: str) -> str:
    value = os.environ.get(var)
    if not value:
        message = f"{what} not available: {var} is unset; run `{START}` and source .cxr-sweep/services/env"
        if os.environ.get("CXR_SWEEP_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (required: CXR_SWEEP_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(message)
    return value


# ---------------------------------------------------------------- databases

@pytest.fixture(scope="session")
def _postgres_admin():
    """One AUTOCOMMIT engine on the server's maintenance DB (CREATE/DROP DATABASE refuse transactions)."""
    from sqlalchemy import create_engine, text

    url = _service("CXR_SWEEP_TEST_POSTGRES_URL", "PostgreSQL")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - a stale env file: say so instead of failing every test obscurely
        engine.dispose()
        pytest.fail(f"PostgreSQL at {url} unreachable ({type(exc).__name__}); rerun `{START}`", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request, tmp_path) -> Iterator[str]:
    """URL of a fresh, empty database, once per backend; the PostgreSQL one is dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/results.db"
        return
    from sqlalchemy import text

    admin = request.getfixturevalue("_postgres_admin")
    name = f"cxr_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a test that forgot to dispose its engine must not leave the database behind.
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------- browser

@dataclass(frozen=True)
class PageFacts:
    title: str
    tables: int         # <table> elements
    images: int         # <img> elements
    images_loaded: int  # <img> that decoded (naturalWidth > 0); a broken data: URI does not
    text: str           # document.body.innerText: what a reader sees, not the markup
    screenshot: Path    # PNG of the first 1280x2000 px, checked to be more than one colour


# Runs in the page after `load` (all data: images decoded) and writes the facts into an attribute
# of <html>, which --dump-dom then prints: no layout change, no browser-driver dependency.
_FACTS_JS = """<script>addEventListener("load", () => {
  const imgs = [...document.images];
  document.documentElement.setAttribute("data-cxr-facts", JSON.stringify({
    title: document.title,
    tables: document.getElementsByTagName("table").length,
    images: imgs.length,
    images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    text: document.body ? document.body.innerText : "",
  }));
});</script>"""
_FACTS_RE = re.compile(r'<html[^>]*\sdata-cxr-facts="([^"]*)"')

_CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox",  # no sandbox: root in CI/containers cannot use it
    "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    # the tests are offline; stop the browser phoning home (and waiting on it)
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,2000",
]


@pytest.fixture
def render_html():
    """render(html_path, screenshot_path) -> PageFacts, via headless Chromium."""
    chromium = _service("CXR_SWEEP_TEST_CHROMIUM", "Chromium")

    def render(html_path, screenshot_path) -> PageFacts:
        page, shot = Path(html_path).resolve(), Path(screenshot_path).resolve()
        shot.unlink(missing_ok=True)
        # The page plus our script, next to the original so relative links resolve the same.
        probe = page.with_name(f".{page.stem}.cxr-facts.html")
        probe.write_text(page.read_text(encoding="utf-8") + _FACTS_JS, encoding="utf-8")
        profile = tempfile.mkdtemp(prefix="cxr-chromium-")  # fresh profile: no state between tests
        try:
            proc = subprocess.run(
                [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                 "--dump-dom", probe.as_uri()],
                capture_output=True, text=True, timeout=120)
        finally:
            probe.unlink(missing_ok=True)
            shutil.rmtree(profile, ignore_errors=True)
        found = _FACTS_RE.search(proc.stdout)
        assert proc.returncode == 0 and found, (
            f"chromium rc={proc.returncode}, no page facts for {page}:\n{proc.stderr[-2000:]}")
        facts = json.loads(html.unescape(found.group(1)))
        _assert_not_blank(shot)
        return PageFacts(screenshot=shot, **facts)

    return render


def _assert_not_blank(png: Path) -> None:
    from PIL import Image

    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG screenshot at {png}"
    with Image.open(png) as im:
        extrema = im.convert("RGB").getextrema()
    assert any(lo != hi for lo, hi in extrema), f"screenshot {png} is a single colour: nothing rendered"
