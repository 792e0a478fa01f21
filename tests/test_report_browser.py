"""The inspection report in a real browser: Debian's Chromium, headless, driven by its
chromedriver through Selenium (the driver and browser named, so Selenium's manager never looks
for a download). The page loads with no console error and no network request, holds a card
per part, its flagged filter shows exactly the flagged parts, the histogram's threshold line is
drawn at the threshold, and its screenshot is not blank."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.report import Card, Header, ReportWriter

from helpers import CATEGORY, calibrated, inctrl_run, random_images

pytestmark = pytest.mark.cli

BROWSER = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(BROWSER) and os.path.exists(DRIVER)):
        pytest.skip("no browser: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium's manager, were it asked, downloads nothing
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--window-size=1280,1600", "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def _no_errors_and_no_requests(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    # every resource the page fetched, and every place it could name one
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    sources = driver.execute_script(
        "return [...document.querySelectorAll('[src],[href]')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
    )
    assert all(source.startswith("data:") for source in sources), sources


def test_a_scored_run_s_report_in_chromium(
    browser, bundle: Path, inputs: dict, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    calibrated(bundle, inputs)
    test = tmp_path / "candle" / "test"
    for kind, seed in (("good", 40), ("crack", 41)):
        (test / kind).mkdir(parents=True)
        for i, image in enumerate(random_images(5, seed=seed)):
            if kind == "crack":
                image[40 + 20 * i : 120 + 20 * i, 60:140] = (250, 20, 20)
            Image.fromarray(image).save(test / kind / f"{i:03d}.png")
    report = tmp_path / "report.html"
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.1, "--json",
                         "--report", report, test / "good", test / "crack")  # fmt: skip
    assert outcome.code == 0, outcome.err
    records = json.loads(outcome.out)
    flagged = sorted(r["image"] for r in records if r["anomalous"])
    assert 0 < len(flagged) < len(records), "the run should flag some parts and not others"

    _open(browser, report)
    _no_errors_and_no_requests(browser)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == len(records) == 10
    scores = [float(card.get_attribute("data-score")) for card in cards]
    assert scores == sorted(scores, reverse=True)  # most anomalous first
    assert all(card.find_element(By.TAG_NAME, "img").get_property("naturalWidth") > 0
               for card in cards)  # fmt: skip

    browser.find_element(By.CSS_SELECTOR, '.filter button[data-show="true"]').click()
    shown = [card for card in cards if card.is_displayed()]
    names = sorted(card.find_element(By.CLASS_NAME, "name").text for card in shown)
    assert names == flagged
    assert browser.find_element(By.CLASS_NAME, "shown").text == str(len(flagged))
    browser.find_element(By.CSS_SELECTOR, '.filter button[data-show="false"]').click()
    assert sum(card.is_displayed() for card in cards) == len(records) - len(flagged)
    browser.find_element(By.CSS_SELECTOR, '.filter button[data-show="all"]').click()
    assert all(card.is_displayed() for card in cards)

    # the threshold line, in screen pixels, where the threshold falls on the score axis
    chart = browser.find_element(By.CLASS_NAME, "histogram")
    line = browser.find_element(By.CLASS_NAME, "threshold-line")
    value = lambda name: float(chart.get_attribute(name))  # noqa: E731
    scale = chart.rect["width"] / value("data-total-width")
    threshold = records[0]["threshold"]
    fraction = (threshold - value("data-low")) / (value("data-high") - value("data-low"))
    expected = chart.rect["x"] + (value("data-left") + fraction * value("data-width")) * scale
    assert line.rect["x"] + line.rect["width"] / 2 == pytest.approx(expected, abs=1.0)

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    pixels = np.asarray(shot)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


def test_a_capped_gallery_says_so_in_chromium(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    picture = io.BytesIO()
    Image.fromarray(random_images(1, seed=6)[0]).save(picture, format="JPEG")
    header = Header("capped", (("bundle", "b"),), calibration=np.linspace(0, 1, 50),
                    threshold=0.9, target_fpr=0.1)  # fmt: skip
    page = tmp_path / "capped.html"
    with ReportWriter(page, header, cap=20) as writer:
        for start in range(0, 300, 100):  # three batches
            writer.add(Card(f"{i}.png", i / 300, None, i >= 290, None, picture.getvalue())
                       for i in range(start, start + 100))  # fmt: skip
        writer.finish()
    _open(browser, page)
    _no_errors_and_no_requests(browser)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card")) == 20
    note = browser.find_element(By.CLASS_NAME, "cap").text
    assert note.startswith("Showing 20 of 300 parts: all 10 flagged")
    browser.find_element(By.CSS_SELECTOR, '.filter button[data-show="true"]').click()
    assert browser.find_element(By.CLASS_NAME, "shown").text == "10"
