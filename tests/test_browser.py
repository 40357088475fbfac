"""The app in a real browser (Debian's chromium via Playwright), checked as a person sees it.

At 1400×1000 and at 390×844 (a phone): the stages become visible in order (predictions, Grad-CAM,
the GIF with its heatmap and plot, Integrated Gradients, the downloads) and the status line is
never covered; the outcome is said in words; the slider names both sides; on the phone the results
are in view after Explain; no two labels overlap; a refused upload gives one message and a retry
stacks nothing; a ``?result=`` link opens the stored result after a restart. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
from PIL import Image

from latentshift.app import layout, server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
RUN_TIMEOUT_MS = 120_000
#: How far apart images that arrive together may finish loading (ms).
ORDER_SLACK_MS = 600
DESKTOP, PHONE = {"width": 1400, "height": 1000}, {"width": 390, "height": 844}
#: What each stage shows, in the order the person should see them appear.
STAGE_SELECTORS = {"predictions": "#predictions .confidence-set",
                   "gradcam": "#gradcam-map img", "gif": "#latent-shift-gif img",
                   "integrated_gradients": "#integrated-gradients-map img", "downloads": "#downloads a"}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")

# Records, every 30 ms, when each stage's element first becomes visible and whether a progress
# bar ever overlapped the status line.
WATCH_JS = """selectors => { window.__seen = {}; window.__statusCovered = false; const t0 = performance.now();
  const shown = el => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.opacity !== '0' && el.offsetParent; };
  window.__watch = setInterval(() => {
    for (const [name, sel] of Object.entries(selectors))
      if (!(name in window.__seen) && [...document.querySelectorAll(sel)].some(shown))
        window.__seen[name] = performance.now() - t0;
    const status = document.querySelector('#status').getBoundingClientRect();
    for (const bar of document.querySelectorAll('.progress-bar, .progress-level, .eta-bar, .meta-text')) {
      const r = bar.getBoundingClientRect();
      if (shown(bar) && r.left < status.right && r.right > status.left && r.top < status.bottom
          && r.bottom > status.top) window.__statusCovered = true; } }, 30); }"""
LABEL_BOXES_JS = """() => [...document.querySelectorAll(
    '[data-testid="block-label"], [data-testid="block-info"], .icon-button-wrapper')]
  .filter(el => el.offsetParent && el.getBoundingClientRect().width > 0)
  .map(el => { const r = el.getBoundingClientRect();
    return {text: (el.innerText || el.getAttribute('aria-label') || el.className).slice(0, 40),
            box: [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]}; })"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    assert layout.example_images(), f"no example PNGs in {layout.EXAMPLES_DIR}"
    demo = layout.build_demo()
    _, url, _ = server.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                              quiet=True)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, url: str, viewport: dict):
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.get_by_role("button", name="Explain", exact=True).wait_for()
    # the page's own load script has run (it hands a DICOM dropped on the image box to the file box)
    page.wait_for_function("document.body.dataset.pageReady === 'true'", timeout=30_000)
    return page


def status_says(page, text: str) -> None:
    page.wait_for_function("text => document.querySelector('#status')?.innerText.includes(text)", arg=text,
                           timeout=RUN_TIMEOUT_MS)


def upload(page, path: str) -> None:
    page.locator("#xray-upload input[type=file]").set_input_files(path)


def overlapping_labels(page) -> list[tuple[str, str]]:
    """Pairs of labels (or a label and a block's buttons) whose boxes overlap by more than 2 px."""
    boxes = page.evaluate(LABEL_BOXES_JS)
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            (l1, t1, r1, b1), (l2, t2, r2, b2) = a["box"], b["box"]
            if min(r1, r2) - max(l1, l2) > 2 and min(b1, b2) - max(t1, t2) > 2:
                pairs.append((a["text"], b["text"]))
    return pairs


def explain_uploaded(page, example: str, shot: str) -> dict:
    """Upload, press Explain, wait until done; when each stage became visible (ms after the click)."""
    upload(page, example)
    status_says(page, "Top prediction")
    page.evaluate(WATCH_JS, STAGE_SELECTORS)
    page.get_by_role("button", name="Explain", exact=True).click()
    page.wait_for_selector("#gradcam-map img", timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / f"{shot}-during.png"))
    status_says(page, "Done in")
    try:
        page.wait_for_function("Object.keys(window.__seen).length >= 5", timeout=5_000)
    finally:
        seen = page.evaluate("window.__seen")
    return seen


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    viewport = page.viewport_size
    return box is not None and box["y"] < viewport["height"] and box["y"] + min(box["height"], 100) > 0


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_stages_appear_in_order_with_the_outcome_in_words(browser, app_url, viewport):
    ARTIFACTS.mkdir(exist_ok=True)
    name = "desktop" if viewport is DESKTOP else "phone"
    page = open_page(browser, app_url, viewport)
    # one image per viewport: the second would otherwise come from the result store, all stages at once
    seen = explain_uploaded(page, layout.example_images()[-1 if viewport is DESKTOP else -2], name)
    # each stage's output appears in stage order; the demo models finish the whole run in about a
    # second, so images that arrive together may finish loading a few hundred ms apart
    stages = ["predictions", "gradcam", "gif", "integrated_gradients"]
    assert all(seen[a] <= seen[b] + ORDER_SLACK_MS for a, b in zip(stages, stages[1:])), seen
    assert not page.evaluate("window.__statusCovered"), "a progress bar covered the status line"
    outcome = page.locator("#outcome").inner_text()
    assert "threshold" in outcome and ("stays" in outcome or "becomes" in outcome), outcome
    caption = page.locator("#slider-caption").inner_text()
    assert "left:" in caption and "curtailed" in caption and "exaggerated" in caption, caption
    downloads = page.locator("#downloads")
    assert downloads.evaluate("el => el.scrollHeight <= el.clientHeight + 2"), "downloads need scrolling"
    if viewport is PHONE:
        assert in_view(page, "#outcome") or in_view(page, "#latent-shift-gif"), "results not in view"
    page.screenshot(path=str(ARTIFACTS / f"{name}-after.png"), full_page=True)
    assert overlapping_labels(page) == []
    page.close()


def visible_error_count(page) -> dict:
    return page.evaluate("""() => ({
      toasts: [...document.querySelectorAll('[data-testid="toast-body"], .toast-body')]
                .filter(t => t.offsetParent).length,
      badges: [...document.querySelectorAll('.error')].filter(e => e.offsetParent && /Error/.test(e.innerText))
                .length,
      broken: [...document.querySelectorAll('#xray-upload img')].filter(i => i.complete && !i.naturalWidth)
                .length })""")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_refused_upload_says_so_once_and_a_retry_stacks_nothing(browser, app_url, viewport, tmp_path):
    page = open_page(browser, app_url, viewport)
    assert overlapping_labels(page) == []          # the empty page too
    bad = tmp_path / "scan.png"
    bad.write_text("this is not an image\n")
    upload(page, str(bad))
    status_says(page, "not an image")
    page.wait_for_timeout(500)
    assert visible_error_count(page) == {"toasts": 1, "badges": 0, "broken": 0}
    page.get_by_role("button", name="Explain", exact=True).click()
    status_says(page, "Upload a chest X-ray first")
    assert visible_error_count(page)["toasts"] <= 1 and visible_error_count(page)["badges"] == 0
    page.screenshot(path=str(ARTIFACTS / f"{'desktop' if viewport is DESKTOP else 'phone'}-bad-upload.png"))
    page.close()


def animated_gif_frames(page, src: str) -> int:
    response = page.request.get(src)
    assert response.ok, f"GET {src}: {response.status}"
    with Image.open(io.BytesIO(response.body())) as gif:
        assert gif.format == "GIF" and gif.is_animated
        return gif.n_frames


def test_a_captioned_example_shows_an_animated_gif(browser, app_url):
    page = open_page(browser, app_url, DESKTOP)
    items = page.locator("#examples button.gallery-item")
    page.wait_for_function("document.querySelector('#examples button.gallery-item')?.dataset.caption")
    captions = [items.nth(i).get_attribute("data-caption") for i in range(items.count())]
    assert set(captions) == {"Normal", "Pneumonia"}
    items.last.click()
    gif_image = page.locator("#latent-shift-gif img")
    gif_image.wait_for(timeout=RUN_TIMEOUT_MS)          # the cached example's result
    status_says(page, "Done in")
    assert animated_gif_frames(page, gif_image.get_attribute("src")) > 1
    page.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_adult_examples_have_their_own_row_and_explain_cardiomegaly(browser, app_url, viewport):
    """Pediatric and adult examples in two labelled rows; an adult example explains Cardiomegaly with the
    adult pair, sets the model and target dropdowns to it, and nothing clears the shown result."""
    ARTIFACTS.mkdir(exist_ok=True)
    name = "desktop" if viewport is DESKTOP else "phone"
    page = open_page(browser, app_url, viewport)
    page.wait_for_function("document.querySelector('#examples-adult button.gallery-item')?.dataset.caption")
    labels = [page.locator(f"#{row}").inner_text() for row in ("examples", "examples-adult")]
    assert labels[0].startswith("Children") and labels[1].startswith("Adults"), labels
    adult = page.locator("#examples-adult button.gallery-item")
    assert adult.count() == len(layout.adult_example_images()) == 4
    assert {adult.nth(i).get_attribute("data-caption") for i in range(adult.count())} == {"Cardiomegaly"}
    page.locator("#examples-adult").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}-examples.png"))
    adult.first.click()
    page.wait_for_selector("#latent-shift-gif img", timeout=RUN_TIMEOUT_MS)
    status_says(page, "Explaining Cardiomegaly")
    page.wait_for_timeout(1500)  # a model change event, had one fired, would have cleared the result by now
    assert page.locator("#latent-shift-gif img").count() == 1, "the example's result was cleared"
    status = page.locator("#status").inner_text()
    assert "classifier demo-adult-cardiomegaly" in status and "autoencoder demo-autoencoder" in status, status
    assert page.locator("#serving-line").inner_text().startswith("Answering with")
    for selector in ("#heatmap-map", "#gradcam-map", "#integrated-gradients-map"):  # images load when in view
        page.locator(selector).scroll_into_view_if_needed()
        page.wait_for_function("s => [...document.querySelectorAll(s + ' img')].some(i => i.naturalWidth > 0)",
                               arg=selector, timeout=RUN_TIMEOUT_MS)
    page.screenshot(path=str(ARTIFACTS / f"{name}-adult-example.png"), full_page=True)
    page.close()


def test_page_loads_inside_an_iframe(browser, app_url):
    page = browser.new_page(viewport=DESKTOP)
    page.set_content(f'<iframe src="{app_url}" style="border:0" width="1200" height="900"></iframe>')
    frame = page.frame_locator("iframe")
    frame.get_by_role("button", name="Explain", exact=True).wait_for(timeout=60_000)
    assert frame.locator("#examples button.gallery-item").count() == len(layout.example_images())
    page.close()


def test_a_shared_link_opens_the_stored_result_after_a_restart(browser, tmp_path):
    """The ``?result=`` link, opened in a fresh browser context after the server was restarted on the same
    store, shows the same result; a link to a deleted result says so."""
    from appserver import runs_for_tests

    results = tmp_path / "results"
    first = _serve(runs_for_tests(results))
    try:
        page = open_page(browser, first[1], DESKTOP)
        upload(page, layout.example_images()[0])
        status_says(page, "Top prediction")
        page.get_by_role("button", name="Explain", exact=True).click()
        status_says(page, "Done in")
        page.wait_for_selector("#share-link a", timeout=RUN_TIMEOUT_MS)
        link = page.locator("#share-link a").get_attribute("href")
        outcome = page.locator("#outcome").inner_text()
        page.close()
    finally:
        first[0].close()
    runs = runs_for_tests(results)                     # a restart: a new process state on the same store
    second = _serve(runs)
    context = browser.new_context(viewport=DESKTOP)   # a second person: no cookies, no session
    try:
        other = context.new_page()
        other.goto(second[1] + link)
        status_says(other, "Opened from a shared link")
        assert other.locator("#outcome").inner_text() == outcome
        other.wait_for_selector("#latent-shift-gif img", timeout=RUN_TIMEOUT_MS)
        assert animated_gif_frames(other, other.locator("#latent-shift-gif img").get_attribute("src")) > 1
        assert runs.store.delete(link.split("=", 1)[1])
        other.goto(second[1] + link)
        status_says(other, "was deleted")
    finally:
        context.close()
        second[0].close()


def _serve(runs):
    demo = layout.build_demo(runs)
    _, url, _ = server.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                              quiet=True)
    return demo, url


def test_a_closed_tab_frees_its_run_within_a_stage(browser, tmp_path):
    """A page closed in the middle of a run: its place in line comes back and no Explanation (with its
    tensors) stays alive, within one stage's time; the run is not stored."""
    import gc
    import time

    from appserver import runs_for_tests
    from latentshift.pipeline import Explanation

    runs = runs_for_tests(tmp_path / "results")
    demo, url = _serve(runs)
    try:
        page = open_page(browser, url, DESKTOP)
        frames = page.locator("#settings input[type=number]").first
        frames.fill("32")                              # the most frames: a long Latent Shift stage
        frames.press("Tab")
        upload(page, layout.example_images()[0])
        status_says(page, "Top prediction")
        page.get_by_role("button", name="Explain", exact=True).click()
        page.wait_for_selector("#gradcam-map img", timeout=RUN_TIMEOUT_MS)
        assert runs.line.counts()["running"] == 1
        page.close()                                   # the tab goes away mid-run
        closed = time.monotonic()
        while runs.line.counts()["running"] and time.monotonic() - closed < 120:
            time.sleep(0.5)
        freed_s = time.monotonic() - closed
        gc.collect()
        alive = [obj for obj in gc.get_objects() if isinstance(obj, Explanation)]
        print(f"place in line given back {freed_s:.1f} s after the tab closed")
        assert runs.line.counts() == {"running": 0, "waiting": 0, "refused": 0}, runs.line.counts()
        assert alive == [], f"{len(alive)} explanation(s) still referenced"
        assert runs.store.list() == []
    finally:
        demo.close()
