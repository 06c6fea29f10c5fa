"""The real-service fixtures work: a fresh database per backend, and headless Chromium page facts."""
from __future__ import annotations

import base64
import io

from PIL import Image
from sqlalchemy import create_engine, inspect, text


def test_engine_url_is_a_fresh_working_database(engine_url, request):
    backend = request.node.callspec.params["engine_url"]
    engine = create_engine(engine_url)
    try:
        assert engine.dialect.name == backend
        assert inspect(engine).get_table_names() == []  # fresh: nothing left over from other tests
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE trials (id INTEGER PRIMARY KEY, auc FLOAT NOT NULL, cell TEXT)"))
            conn.execute(text("INSERT INTO trials (id, auc, cell) VALUES (:id, :auc, :cell)"),
                         [{"id": 1, "auc": 0.75, "cell": "resnet18/lp"}, {"id": 2, "auc": 0.85, "cell": "resnet18/ft"}])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*), AVG(auc) FROM trials")).one() == (2, 0.8)
            version = conn.execute(text("SELECT version()" if backend == "postgresql" else "SELECT sqlite_version()")).scalar()
        assert version.startswith("PostgreSQL") if backend == "postgresql" else version[0].isdigit()
    finally:
        engine.dispose()


def _png_data_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_render_html_reports_what_chromium_rendered(render_html, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sweep report &amp; co</title></head>
<body>
  <h1>cxr-sweep report</h1>
  <table><tr><th>cell</th><th>AUC</th></tr><tr><td>resnet18/lp</td><td>MARKER-0.812</td></tr></table>
  <img alt="curve" src="{_png_data_uri()}">
  <img alt="broken" src="data:image/png;base64,bm90IGEgcG5n">
  <p style="display:none">hidden text is not innerText</p>
</body></html>""", encoding="utf-8")

    facts = render_html(page, tmp_path / "shot.png")

    assert facts.title == "Sweep report & co"
    assert (facts.tables, facts.images, facts.images_loaded) == (1, 2, 1)
    assert "MARKER-0.812" in facts.text and "cxr-sweep report" in facts.text
    assert "hidden text" not in facts.text
    assert not list(tmp_path.glob(".*cxr-facts*"))  # the probe copy is cleaned up
    with Image.open(facts.screenshot) as shot:
        assert shot.format == "PNG" and shot.size == (1280, 2000)
        rgb = shot.convert("RGB")
        assert len(rgb.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 2  # text + image, not blank
        # The red test image was painted near the top left of the page.
        assert (200, 30, 30) in {rgb.getpixel((x, y)) for x in range(0, 300, 4) for y in range(0, 300, 4)}
