"""The page's second round in a real browser, at 1400×1000 and 390×844: noise gets the red banner and
no probabilities, and "Explain anyway" explains it under the banner; an adult cardiomegaly X-ray
reaches a Cardiomegaly explanation by demo-adult-cardiomegaly in two clicks (the finding, Explain);
a DICOM dropped on the image box is read; Compare starts from the Explain tab's image and finding;
no label covers another; map legends are at least 9 px tall as displayed. Screenshots go to
test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentshift.io import render
from test_browser import (ARTIFACTS, CHROMIUM, DESKTOP, PHONE, app_url, browser, open_page,  # noqa: F401
                          overlapping_labels, status_says, upload)

REPO = Path(__file__).resolve().parents[1]
ADULT = sorted((REPO / "examples" / "adult").glob("cardiomegaly-*.png"))[0]
VIEWPORTS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("noise") / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(path)
    return str(path)


def name(viewport: dict) -> str:
    return "desktop" if viewport == DESKTOP else "phone"


def wait_for_banner(page, label: str) -> None:
    """Wait for the not-a-chest-X-ray banner; on a timeout, fail with what the page shows instead
    (its status, warnings and banner texts, and a screenshot ``FAILED-<label>.png``)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector("#banner p", timeout=90_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(ARTIFACTS / f"FAILED-{label}.png"), full_page=True)
        shown = {box: page.locator(box).inner_text() if page.locator(box).count() else None
                 for box in ("#status", "#warnings", "#banner", "#xray-upload", "#file-upload")}
        raise AssertionError(f"no banner after 90 s; the page shows {shown}") from None


@VIEWPORTS
def test_noise_gets_the_banner_and_explain_anyway_runs_it_under_it(browser, app_url, viewport, noise):
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, app_url, viewport)
    upload(page, noise)
    wait_for_banner(page, f"noise-{name(viewport)}")
    assert "does not look like a chest X-ray" in page.locator("#banner").inner_text()
    assert page.locator("#predictions .confidence-set").count() == 0, "no probabilities for noise"
    assert page.locator("#explain-anyway").is_visible()
    page.screenshot(path=str(ARTIFACTS / f"noise-banner-{name(viewport)}.png"))
    page.get_by_role("button", name="Explain", exact=True).click()
    status_says(page, "Not explained")
    assert page.locator("#latent-shift-gif img").count() == 0 and page.locator("#outcome p").count() == 0
    page.locator("#explain-anyway").click()
    page.wait_for_selector("#latent-shift-gif img", timeout=120_000)
    assert "Explained anyway" in page.locator("#banner").inner_text()
    page.screenshot(path=str(ARTIFACTS / f"noise-anyway-{name(viewport)}.png"), full_page=True)
    page.close()


@VIEWPORTS
def test_an_adult_cardiomegaly_image_reaches_its_classifier_in_two_clicks(browser, app_url, viewport):
    page = open_page(browser, app_url, viewport)
    upload(page, str(ADULT))
    status_says(page, "Top prediction")
    assert "children" in page.locator("#warnings").inner_text()
    assert page.locator("#classifier").is_visible(), "the classifier answering is visible without an accordion"
    page.get_by_label("Finding to explain").click()                     # click 1: the finding
    page.get_by_role("option", name="Cardiomegaly", exact=True).click()
    page.wait_for_function("document.querySelector('#answering')?.innerText.includes('demo-adult-cardiomegaly')",
                           timeout=120_000)
    assert page.locator("#classifier input").input_value() == "demo-adult-cardiomegaly"
    page.get_by_role("button", name="Explain", exact=True).click()     # click 2
    status_says(page, "Done in")
    assert "Cardiomegaly" in page.locator("#outcome").inner_text()
    assert not overlapping_labels(page), overlapping_labels(page)
    scale = page.locator("#gradcam-map img").evaluate("e => e.clientWidth / e.naturalWidth")
    if viewport == DESKTOP:
        assert render.OVERLAY_TEXT_PX * 2 * scale >= 9, f"map legend {render.OVERLAY_TEXT_PX * 2 * scale:.1f} px"
    page.screenshot(path=str(ARTIFACTS / f"adult-cardiomegaly-{name(viewport)}.png"), full_page=True)
    page.get_by_role("tab", name="Compare classifiers").click()
    page.wait_for_function("document.querySelector('#compare-target input')?.value === 'Cardiomegaly'",
                           timeout=30_000)
    page.close()


def test_a_dicom_dropped_on_the_image_box_is_read(browser, app_url):
    import pydicom.data

    page = open_page(browser, app_url, DESKTOP)
    upload(page, pydicom.data.get_testdata_file("CT_small.dcm"))
    # read by the imaging layer (a CT slice: the domain check's banner), not refused as a file type
    wait_for_banner(page, "dicom")
    assert "does not look like a chest X-ray" in page.locator("#banner").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dicom-on-the-image-box.png"))
    page.close()
