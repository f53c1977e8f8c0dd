"""The web page of `lumina-rt serve` in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven
with selenium): submit a prompt, watch the progress move, the video element plays the result, delete it."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.test_serve import engine_dir, start_server  # noqa: F401  (fixtures)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(
        f"timed out waiting for {what}; the page shows: {driver.find_element('tag name', 'body').text}"
    )


def test_page_submits_shows_progress_and_plays_the_video(start_server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    server = start_server("--max-batch", "1")
    browser.get(server.url + "/")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#size option")) > 0, 30, "the served sizes")
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys("a blue square moving left slowly")
    browser.find_element(By.CSS_SELECTOR, "#size option[value='32x32']").click()
    browser.find_element(By.CSS_SELECTOR, "#seconds option[value='1']").click()
    browser.find_element(By.ID, "steps").send_keys("120")
    browser.find_element(By.ID, "submit").click()
    job = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "li.job"), 30, "the job in the list")[0]
    seen = set()
    deadline = time.monotonic() + 90
    while job.get_attribute("data-status") != "completed" and time.monotonic() < deadline:
        seen.add(int(job.get_attribute("data-progress") or 0))
        assert job.get_attribute("data-status") != "failed", job.text
        time.sleep(0.01)
    assert job.get_attribute("data-status") == "completed"
    assert len(seen - {0, 100}) >= 3, seen  # the bar moved through the steps (SSE), not 0 -> 100
    video = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "li.job video"), 30, "the video element")[0]
    playing = wait(
        browser,
        lambda d: d.execute_script(
            "const v = arguments[0]; return v.readyState >= 2 && v.currentTime > 0 && !v.error"
            " ? [v.videoWidth, v.videoHeight, v.duration] : null",
            video,
        ),
        30,
        "the video to play",
    )
    assert playing[:2] == [32, 32] and abs(playing[2] - 1.0) < 0.2, playing
    if os.environ.get("LUMINA_RT_SCREENSHOT"):
        browser.save_screenshot(os.environ["LUMINA_RT_SCREENSHOT"])
    job.find_element(By.CSS_SELECTOR, "button.delete").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "li.job"), 10, "the job to leave the list")
    import httpx

    assert httpx.get(server.url + "/v1/videos").json()["data"] == []
