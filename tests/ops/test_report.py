"""The HTML report: its content, its escaping, and that a real headless browser renders it
cleanly."""

from __future__ import annotations

import html as _html
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _synthetic import fill_store, make_traces

from tracer_wrap import Embedder
from tracer_wrap.engine import TracedTask
from tracer_wrap.errors import ConfigError
from tracer_wrap.model.hashing import hashing_embedder
from tracer_wrap.ops.report import render_report
from tracer_wrap.store import TraceStore

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)> lost card & stolen card'


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("report")
    st = TraceStore(path / "store")
    fill_store(st, "intent<b>", 1000)
    st.append("intent<b>", EVIL, "card_lost")
    task = TracedTask("intent<b>", store=st, embedder=hashing_embedder(), min_traces=50,
                      refit_every=None, target=0.95)
    task.refit()
    task.refit()  # a second version for the learning curve
    for i in range(120):
        st.append("intent<b>", f"audit sample {i} refund money back", "refund", origin="audit",
                  router_label="refund" if i % 10 else "top_up", ts=1.7e9 + 60 * i)
    st.set_setting("intent<b>", "price", {"per_call": 0.01})
    st.add_counters("intent<b>", {"calls": 1000, "local": 900, "llm": 100})
    html = render_report(st, "intent<b>", embedder=hashing_embedder(), examples=2000)
    out = path / "report.html"
    out.write_text(html, encoding="utf-8")
    return html, out


def test_report_has_every_section_and_plot(page: tuple[str, Path]) -> None:
    html, _ = page
    for title in ("Coverage / target frontier", "Version history", "Learning curve",
                  "Live agreement over time",
                  "Coverage and agreement per label", "Where the surrogate defers most",
                  "Examples", "Cost"):
        assert f"<h2>{title}</h2>" in html
    assert html.count("<svg") == 3  # frontier, learning curve, live agreement
    assert "90.0% on" not in html and "live agreement" in html
    assert "Saved so far: <strong>9.00</strong>" in html  # 900 local answers x 0.01
    assert "v2 (served)" in html  # the version history
    assert "including those it was trained and calibrated on" in html
    for label in ("card_lost", "refund", "top_up", "exchange_rate"):
        assert label in html


def test_everything_from_traces_is_escaped(page: tuple[str, Path]) -> None:
    html, _ = page
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "intent&lt;b&gt;" in html


def test_report_is_self_contained(page: tuple[str, Path]) -> None:
    html, _ = page
    assert "default-src 'none'" in html  # the page may not fetch anything
    urls = set(re.findall(r"(?:https?:)?//[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}


def test_report_without_traces_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        render_report(TraceStore(tmp_path), "empty")


def test_report_embeds_only_traces_never_embedded(tmp_path: Path) -> None:
    st = TraceStore(tmp_path / "store")
    fill_store(st, "t", 400)
    hashing = hashing_embedder()
    embedded: list[str] = []

    def counting(texts: list[str]) -> object:
        embedded.extend(texts)
        return hashing.embed(texts)

    embedder = Embedder.from_callable(counting, name=hashing.name, cache_bytes=0)
    TracedTask("t", store=st, embedder=embedder, min_traces=50, refit_every=None).refit()
    assert len(embedded) == len(st.traces("t", valid_only=True))
    embedded.clear()
    st.append("t", "a trace nobody embedded yet about my card", "card_lost")
    render_report(st, "t", embedder=embedder)
    assert embedded == ["a trace nobody embedded yet about my card"]
    embedded.clear()
    render_report(st, "t", embedder=embedder)
    assert embedded == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                               "(apt-get install chromium)")
def test_report_renders_in_headless_chromium(page: tuple[str, Path], tmp_path: Path) -> None:
    _, out = page
    dom = _chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 3 and dom.stdout.count("<polyline") >= 3
    console = [line for line in dom.stderr.splitlines()
               if "CONSOLE" in line or "Content Security Policy" in line
               or "Uncaught" in line or "net::ERR" in line]
    assert not console, console
    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, "--window-size=1200,2400", f"--screenshot={shot}", out.as_uri())
    assert run.returncode == 0 and shot.stat().st_size > 20_000


def fitted_store(path: Path, target: float = 0.95) -> TraceStore:
    st = TraceStore(path / "store")
    fill_store(st, "t", 600)
    TracedTask("t", store=st, embedder=hashing_embedder(), min_traces=50, refit_every=None,
               target=target).refit()
    return st


def test_the_frontier_table_writes_targets_as_its_chart_does(tmp_path: Path) -> None:
    # ".4g" wrote 0.9 next to 0.85 and 0.95.
    html = render_report(fitted_store(tmp_path), "t", embedder=hashing_embedder())
    frontier = html[html.index("Coverage / target frontier"):html.index("Version history")]
    cells = re.findall(r"<tr><td>([0-9.]+)</td>", frontier)
    assert "0.90" in cells and all(len(c) == 4 for c in cells), cells


def test_the_served_marker_stays_inside_the_chart_at_the_highest_target(tmp_path: Path) -> None:
    # At the highest target the marker's text started at the line and ran past the plot.
    st = fitted_store(tmp_path, target=0.99)
    html = render_report(st, "t", embedder=hashing_embedder())
    (marker,) = re.findall(r'<text class="note vline" x="([0-9.]+)" text-anchor="(\w+)"', html)
    (line,) = re.findall(r'<line class="ref" x1="([0-9.]+)" x2="\1" y1="16"', html)
    assert marker[1] == "end" and float(marker[0]) < float(line)


def test_a_refused_version_is_shown_as_refused_everywhere(tmp_path: Path) -> None:
    st = fitted_store(tmp_path)
    npz = next((tmp_path / "store").glob("routers/*/v1.npz"))
    data = bytearray(npz.read_bytes())
    data[200:204] = b"XXXX"
    npz.write_bytes(bytes(data))
    html = render_report(st, "t", embedder=hashing_embedder())
    assert "v1 refused" in html and "(served)" not in html and "served</text>" not in html
    assert "v1 (refused: " in html  # the version history, with the reason
    assert "Needs a fitted router" not in html
    assert html.count("Version 1 is refused: ") == 4  # frontier, per label, pairs, examples
    assert html.count("hash mismatch") >= 5


# -- long labels in a real browser, measured through WebDriver (chromedriver) -----------------

CHROMEDRIVER = shutil.which("chromedriver")
LONG_ASCII = "card_lost_" + "x" * 300
LONG_UNICODE = 'возврат_денег_退款_"<i>"_🚀_' * 80  # 2,000 characters, none of them a space


class _WebDriver:
    """A minimal W3C WebDriver client over HTTP (no selenium): chromedriver runs the page's
    measuring scripts outside its Content-Security-Policy, which forbids any script in it."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                pytest.fail("chromedriver did not start")
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'wd-profile'}",
                "--window-size=1200,900"]
        caps = {"browserName": "chrome",
                "goog:chromeOptions": {"binary": str(CHROMIUM), "args": args}}
        self.session = self._call("POST", "/session",
                                  {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def do(self, method: str, path: str, body: object = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def run(self, script: str) -> Any:
        return self.do("POST", "/execute/sync", {"script": script, "args": []})

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


#: Measures, in the rendered page, what long labels used to break (all in CSS pixels).
_MEASURE = """
const page = document.documentElement;
const section = title => [...document.querySelectorAll('section')]
  .find(s => s.querySelector('h2').textContent === title);
const perLabel = section('Coverage and agreement per label');
const visible = perLabel.querySelector('.scroll').getBoundingClientRect();
const numeric = [...perLabel.querySelectorAll('tbody tr')]
  .flatMap(row => [...row.cells].slice(1))
  .map(cell => cell.getBoundingClientRect().right);
const examples = section('Examples');
return {
  page_width: page.clientWidth,
  page_scroll_width: page.scrollWidth,
  per_label_right: Math.min(page.clientWidth, visible.right),
  numeric_rights: numeric,
  examples_right: examples.getBoundingClientRect().right,
  examples: [...examples.querySelectorAll('table.examples')].map(table => ({
    table: table.getBoundingClientRect().width,
    input: table.querySelector('thead th').getBoundingClientRect().width,
    cells_right: Math.max(...[...table.querySelectorAll('td')]
      .map(cell => cell.getBoundingClientRect().right)),
  })),
  titles: [...document.querySelectorAll('span.label')].map(s => s.title),
  clipped: [...document.querySelectorAll('span.label')].map(s => s.textContent),
};
"""


@pytest.fixture(scope="module")
def long_label_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("long-labels")
    rename = {"card_lost": LONG_ASCII, "refund": LONG_UNICODE}
    st = TraceStore(path / "store")
    for text, label in make_traces(800):
        st.append("t", text, rename.get(label, label), origin="llm")
    TracedTask("t", store=st, embedder=hashing_embedder(), min_traces=50, refit_every=None,
               target=0.95).refit()
    html = render_report(st, "t", embedder=hashing_embedder())
    out = path / "report.html"
    out.write_text(html, encoding="utf-8")
    return html, out


def test_long_labels_are_clipped_with_the_whole_label_as_tooltip(
        long_label_page: tuple[str, Path]) -> None:
    html, _ = long_label_page
    title = _html.escape(LONG_UNICODE)
    assert LONG_ASCII not in html.replace(f'title="{LONG_ASCII}"', "")
    assert LONG_UNICODE not in html and title not in html.replace(f'title="{title}"', "")
    assert f'title="{title}"' in html and "<i>" not in html
    clipped = re.findall(r'<span class=\'label\' title="[^"]*">([^<]*)</span>', html)
    assert clipped and all(len(_html.unescape(c)) == 60 and c.endswith("…") for c in clipped)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="chromium or chromedriver is not installed "
                           "(apt-get install chromium chromium-driver)")
def test_long_labels_keep_the_tables_readable_in_a_browser(
        long_label_page: tuple[str, Path], tmp_path: Path) -> None:
    # A 300-character label pushed every numeric column of the per-label table out of view,
    # and squeezed the Examples' input column to a few characters a line.
    browser = _WebDriver(tmp_path)
    try:
        browser.do("POST", "/url", {"url": long_label_page[1].as_uri()})
        for width in (1200, 800):
            browser.do("POST", "/window/rect", {"width": width, "height": 900})
            m = browser.run(_MEASURE)
            assert m["page_scroll_width"] <= m["page_width"], (width, m["page_scroll_width"])
            assert m["numeric_rights"] and max(m["numeric_rights"]) <= m["per_label_right"] + 1, \
                (width, max(m["numeric_rights"]), m["per_label_right"])
            assert len(m["examples"]) == 2  # answered locally and deferred
            for table in m["examples"]:
                assert table["input"] >= table["table"] / 3, (width, table)
                assert table["cells_right"] <= m["examples_right"], (width, table)
        # The tooltips hold the labels whole, as the browser reads them.
        assert set(m["titles"]) == {LONG_ASCII, LONG_UNICODE}
    finally:
        browser.close()
