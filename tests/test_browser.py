"""The app in a real browser: Debian's chromium driven by Playwright's Python package.

Open the page, click an example (its result is computed once and cached), press Explain, wait
for the streamed run to finish, check the GIF the page shows is animated, and save a screenshot
to test-artifacts/app.png.
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

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")


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


@pytest.fixture
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            yield page
        finally:
            browser.close()


def status_says(page, text: str) -> None:
    page.wait_for_function("text => document.querySelector('#status')?.innerText.includes(text)", arg=text,
                           timeout=RUN_TIMEOUT_MS)


def animated_gif_frames(page, src: str) -> int:
    response = page.request.get(src)
    assert response.ok, f"GET {src}: {response.status}"
    with Image.open(io.BytesIO(response.body())) as gif:
        assert gif.format == "GIF" and gif.is_animated
        return gif.n_frames


def test_example_explain_shows_an_animated_gif(page):
    page.get_by_role("button", name="Explain", exact=True).wait_for()
    # Any example will do; the last ones of the gallery show pneumonia, the most telling GIF.
    page.locator("#examples button.gallery-item").last.click()
    gif_image = page.locator("#latent-shift-gif img")
    gif_image.wait_for(timeout=RUN_TIMEOUT_MS)          # the cached example's result
    status_says(page, "Done in")

    page.get_by_role("button", name="Explain", exact=True).click()
    status_says(page, "Working on")                     # the first streamed stage replaced it
    status_says(page, "Done in")
    gif_image.wait_for(timeout=RUN_TIMEOUT_MS)

    assert animated_gif_frames(page, gif_image.get_attribute("src")) > 1
    for map_id in ("heatmap-map", "gradcam-map", "integrated-gradients-map"):
        assert page.locator(f"#{map_id} img").is_visible(), f"{map_id} shows no image"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)


def test_page_loads_inside_an_iframe(page, app_url):
    page.set_content(f'<iframe src="{app_url}" style="border:0" width="1200" height="900"></iframe>')
    frame = page.frame_locator("iframe")
    frame.get_by_role("button", name="Explain", exact=True).wait_for(timeout=60_000)
    assert frame.locator("#examples button.gallery-item").count() == len(layout.example_images())
