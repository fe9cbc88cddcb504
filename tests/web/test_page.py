"""The live fleet page in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

Selenium is given both binaries' paths and SE_OFFLINE, so Selenium Manager never downloads a
browser or a driver. The page must show three machines, a fourth appearing, and a stopped one turning
stale, without a reload; then one machine's page with its charts and latest results. Screenshots of
each step are written to tests/artifacts/web/<test>/ (printed; ignored by git).
"""

from __future__ import annotations

import os

import pytest
from integration.harness import wait_for

from mdp_agent import __version__ as AGENT_VERSION

from .conftest import artifacts_dir, ensure_debian_package

pytestmark = [pytest.mark.web, pytest.mark.slow]


@pytest.fixture
def browser():
    chromium = ensure_debian_package("chromium", "chromium")
    driver_path = ensure_debian_package("chromium-driver", "chromedriver")
    os.environ["SE_OFFLINE"] = "true"   # Selenium Manager: use what is given, download nothing
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def rows(driver) -> dict[str, str]:
    """{ip: state} as the page shows it now (read in one script: the page redraws its rows every 2 s)."""
    return dict(driver.execute_script(
        "return [...document.querySelectorAll('#fleet tbody tr')].map(r => [r.dataset.ip, r.dataset.state]);"))


def row_text(driver, ip: str) -> str:
    return driver.execute_script(f"return document.querySelector('tr[data-ip=\"{ip}\"]').innerText;")


def click(driver, selector: str):
    """Click what the selector finds now (a redraw between finding and clicking would make it stale)."""
    driver.execute_script(f"document.querySelector('{selector}').click();")


def test_the_page_follows_the_fleet_live(fleet_on_loopback, browser):
    from selenium.webdriver.common.by import By
    shots = artifacts_dir("test_the_page_follows_the_fleet_live")
    monitor = fleet_on_loopback.monitor()
    agents = [fleet_on_loopback.agent(ip, monitor) for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
    browser.get(f"http://{monitor.http}/")
    assert browser.title == "MDP fleet"
    three = {a.ip: "up" for a in agents}
    wait_for(lambda: rows(browser) == three, "the page to show three machines up", timeout=30, interval=0.25)
    first = row_text(browser, "127.0.0.2")
    assert "up" in first and "ago" in first and "%" in first and AGENT_VERSION in first, first
    browser.save_screenshot(str(shots / "1-three-up.png"))

    fourth = fleet_on_loopback.agent("127.0.0.5", monitor)
    wait_for(lambda: rows(browser) == dict(three, **{fourth.ip: "up"}), "the fourth machine to appear",
             timeout=30, interval=0.25)
    browser.save_screenshot(str(shots / "2-fourth-appears.png"))

    agents[1].stop()
    wait_for(lambda: rows(browser).get(agents[1].ip) == "stale", f"{agents[1].ip} to turn stale", timeout=30,
             interval=0.25)
    assert rows(browser) == {"127.0.0.2": "up", "127.0.0.3": "stale", "127.0.0.4": "up", "127.0.0.5": "up"}
    assert "4 machines: 3 up, 1 stale" in browser.find_element(By.ID, "summary").text
    browser.save_screenshot(str(shots / "3-one-stale.png"))

    # Filter and sort, as an operator would.
    browser.find_element(By.ID, "filter").send_keys("stale")
    wait_for(lambda: list(rows(browser)) == ["127.0.0.3"], "the filter to leave the stale machine", timeout=10)
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "filter").send_keys(" ")   # an input event with an empty filter
    wait_for(lambda: len(rows(browser)) == 4, "the filter to be cleared", timeout=10)
    click(browser, 'th[data-key="ip"]')   # ip was the sort key: now descending
    wait_for(lambda: list(rows(browser)) == ["127.0.0.5", "127.0.0.4", "127.0.0.3", "127.0.0.2"], "sorted by ip, descending",
             timeout=10)

    # One machine's page: charts over its stored history and the latest result of every operation.
    click(browser, 'tr[data-ip="127.0.0.2"]')
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-load polyline"), "the load chart", timeout=20)
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#operations tr[data-operation]")) == 8,
             "the latest result of each of the 8 reported operations", timeout=20)
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-memory polyline")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-disk polyline")
    assert browser.find_element(By.ID, "machine-title").text.startswith("127.0.0.2")
    browser.save_screenshot(str(shots / "4-machine-page.png"))
