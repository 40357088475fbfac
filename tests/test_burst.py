"""Burst: 40 real Chromium pages press Explain at the same moment against one local server.

Each page first uploads its own pediatric X-ray (an app example with a few pixels changed per page,
so no two share a stored result) and waits for the prediction; then every page clicks Explain at
one agreed wall-clock time. Each page must end with either the full result (status "Done in", the
GIF, the three maps, the downloads and the share link) or the busy message ("Busy: N ahead of
you"), never half-way, and no red "Error" badge anywhere. The counts go to test-artifacts/burst.json.

Marked ``burst`` (minutes; excluded from the default run, run by .ci/run after it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appserver import free_port, runs_for_tests

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--renderer-process-limit=8",
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PAGES = 40
#: Longest wait for the line to drain (21 runs of the default settings; minutes on a loaded machine).
FINISH_TIMEOUT_S = 1500
#: A page's end state: "full", "busy", or what it shows (half-way).
STATE_JS = """() => {
  const status = document.querySelector('#status')?.innerText || '';
  const has = sel => [...document.querySelectorAll(sel)].some(el => el.offsetParent || el.naturalWidth);
  const badges = [...document.querySelectorAll('.error')].filter(e => e.offsetParent && /Error/.test(e.innerText));
  let state = 'halfway';
  if (status.includes('Busy:')) state = 'busy';
  else if (status.includes('Waiting in line') || status.includes('Working on')) state = 'running';
  else if (status.includes('Done in') && has('#latent-shift-gif img') && has('#heatmap-map img')
           && has('#gradcam-map img') && has('#integrated-gradients-map img') && has('#downloads a')
           && (document.querySelector('#share-link')?.innerText || '').includes('Link to this result'))
    state = 'full';
  return {state, status: status.slice(0, 160), badges: badges.length}; }"""

pytestmark = [pytest.mark.burst,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")]


def page_images(folder: Path, count: int) -> list[Path]:
    """``count`` different pediatric X-rays: the app's examples, each copy with one pixel row changed."""
    from latentshift.app import layout

    examples = [path for path in layout.example_images()]
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        with Image.open(examples[index % len(examples)]) as source:
            pixels = np.array(source)
        pixels[index % pixels.shape[0], : 1 + index // len(examples)] ^= 1
        path = folder / f"page-{index:02d}.png"
        Image.fromarray(pixels).save(path)
        images.append(path)
    return images


@pytest.fixture(scope="module")
def burst_server(tmp_path_factory):
    from latentshift.app import layout, server

    runs = runs_for_tests(tmp_path_factory.mktemp("burst-results"))
    demo = layout.build_demo(runs)
    _, url, _ = server.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                              quiet=True)
    try:
        yield url, runs
    finally:
        demo.close()


def _open_pages(browser, url: str, images: list[Path]) -> list:
    pages = []
    for image in images:
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        page.goto(url)
        page.get_by_role("button", name="Explain", exact=True).wait_for(timeout=120_000)
        page.locator("#xray-upload input[type=file]").set_input_files(str(image))
        pages.append(page)
    for page in pages:
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Top prediction')",
                               timeout=120_000)
    return pages


def _press_together(pages: list) -> None:
    """Every page clicks Explain at the same wall-clock moment (3 s from now, by each page's clock)."""
    moment_ms = int((time.time() + 3) * 1000)
    for page in pages:
        page.evaluate("moment => setTimeout(() => document.querySelector('#explain-button').click(), "
                      "moment - Date.now())", moment_ms)


def _final_states(pages: list) -> list[dict]:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    states = [None] * len(pages)
    # A page still waiting or computing is a live run, not half-way: wait for it (a page that shows
    # neither the result, the busy message nor a live run's line when its time is up counts as half-way).
    while time.monotonic() < deadline and any(s is None or s["state"] in ("halfway", "running") for s in states):
        for index, page in enumerate(pages):
            if states[index] is None or states[index]["state"] in ("halfway", "running"):
                states[index] = page.evaluate(STATE_JS)
        time.sleep(1.0)
    return states


def test_forty_pages_at_once_each_end_with_the_result_or_the_busy_message(burst_server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, runs = burst_server
    images = page_images(tmp_path / "images", PAGES)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            pages = _open_pages(browser, url, images)
            started = time.monotonic()
            _press_together(pages)
            time.sleep(4)
            states = _final_states(pages)
            seconds = time.monotonic() - started
            time.sleep(2)  # the last run's share link and release
            counts = {kind: sum(s["state"] == kind for s in states) for kind in ("full", "busy", "halfway", "running")}
            report = {"pages": PAGES, **counts, "error_badges": sum(s["badges"] for s in states),
                      "seconds_to_last": round(seconds, 1), "line": runs.line.counts(),
                      "stored": len(runs.store.list()), "halfway_status": [s["status"] for s in states
                                                                           if s["state"] == "halfway"]}
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "burst.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report))
    assert counts["halfway"] == 0 and counts["running"] == 0, report
    assert counts["full"] + counts["busy"] == PAGES and report["error_badges"] == 0, report
    assert counts["full"] >= 2 and report["stored"] == counts["full"], report
    assert runs.line.counts()["running"] == runs.line.counts()["waiting"] == 0, "a place in line was not given back"
