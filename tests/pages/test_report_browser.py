"""report.html opened in a real headless Chromium: every image decodes, every table is whole, nothing leaks as text.

A copy of the page gets a script that, on load, writes what it found into the DOM; `chromium --headless
--dump-dom` prints the DOM after the load event, and the test reads the script's verdict from it.
Chromium comes from Debian's `chromium` package (scripts/tools.sh installs it with the test tools).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from report_fixtures import evaluated_store

from plankton_core.pages.report import write_report

CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); })\
.map(function (i) { return i.alt; });
  var tables = Array.prototype.slice.call(document.querySelectorAll("table"));
  var ragged = tables.filter(function (t) {
    var n = t.tHead ? t.tHead.rows[0].cells.length : -1;
    return n < 1 || Array.prototype.slice.call(t.tBodies[0].rows).some(function (r) { return r.cells.length !== n; });
  }).length;
  var text = document.body.innerText;
  var out = document.createElement("pre");
  out.id = "report-check";
  out.textContent = JSON.stringify({
    images: imgs.length, broken: broken, tables: tables.length, ragged: ragged,
    figures: document.querySelectorAll("figure").length,
    leaked: /data:image|<img|<\\/td>|<figure/.test(text), title: document.title
  });
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, (
        "chromium not found: install Debian's chromium package (apt-get install chromium; scripts/tools.sh does)"
    )
    return path


def open_in_chromium(html_path, tmp_path) -> dict:
    page = tmp_path / "check.html"
    page.write_text(html_path.read_text().replace("</body>", CHECK + "</body>"))
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=10000",
    ]
    cmd += [f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="report-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium did not run the check (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(
        found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )


@pytest.mark.parametrize("max_mb", [50.0, 0.08])
def test_report_opens_in_chromium_with_every_image_decoded(tmp_path, max_mb):
    store = evaluated_store(tmp_path / "root")
    write_report(store, "report", max_mb=max_mb)
    html_path = tmp_path / "root" / "report" / "report.html"
    html = html_path.read_text()
    result = open_in_chromium(html_path, tmp_path)
    assert result["images"] == html.count('src="data:image/') > 0
    assert result["broken"] == [], result["broken"]
    assert result["tables"] == html.count("<table>") > 0 and result["ragged"] == 0
    assert result["figures"] == html.count("<figure") and not result["leaked"]
    assert result["title"] == "plankton — test report"


def test_the_check_sees_a_broken_image(tmp_path):
    """The check can fail: an image whose data is not an image is reported broken."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><head><title>t</title></head><body>"
        "<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>1</td><td>2</td></tr></tbody></table>"
        '<img alt="bad" src="data:image/jpeg;base64,bm90IGFuIGltYWdl"></body></html>'
    )
    result = open_in_chromium(page, tmp_path)
    assert result["broken"] == ["bad"] and result["ragged"] == 1
