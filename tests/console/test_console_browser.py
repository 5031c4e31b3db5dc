"""The web console in a real headless Chromium: sign in, search the catalog, read a feature
page, watch the live job page move, submit the lookup form. Saves docs/console.png."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from tests.support.servers import find_debian_binary
from volga.console import ConsoleApp
from volga.scaffold import init_project
from volga.serving.run import load_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
TOKEN = "console-secret"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = find_debian_binary("chromium", "chromium")
    chromedriver = find_debian_binary("chromedriver", "chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager try to download a browser
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1500",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo project's features on a feature server with /ui, and its online job running."""
    root = tmp_path_factory.mktemp("console") / "demo"
    init_project(root)
    client = load_app(str(root / "app.py"))
    console = ConsoleApp(client, TOKEN)
    pipeline = client.definitions["user_spend"]
    client.materialize([pipeline], mode="offline")
    job = client.materialize([pipeline], mode="online", params={"online": True}, block=False)
    server = console.mount(client.serve(auth_token=TOKEN))
    yield client, server, root
    server.stop()
    job.stop()


def wait(driver, condition, timeout: float = 20):
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # the live page replaces its content every 2s: an element read mid-swap is just read again
    ignored = (StaleElementReferenceException, NoSuchElementException)
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)


def visible_names(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [row.find_element(By.TAG_NAME, "a").text for row in driver.find_elements(By.CSS_SELECTOR, "#catalog tr[data-search]")
            if row.is_displayed()]


def test_console_pages_in_a_browser(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    client, server, root = served
    # 1. the console needs the server's token: sign in through the form
    browser.get(server.url + "/ui")
    assert "needs its auth token" in browser.find_element(By.TAG_NAME, "main").text
    browser.find_element(By.NAME, "token").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    wait(browser, lambda d: "wrong token" in d.find_element(By.TAG_NAME, "main").text)
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    wait(browser, lambda d: d.find_elements(By.ID, "catalog"))

    # 2. the catalog, searched as one types
    assert visible_names(browser) == ["orders", "user_spend", "spend_profile"]
    search = browser.find_element(By.ID, "search")
    search.send_keys("raw")
    wait(browser, lambda d: visible_names(d) == ["orders"])
    assert browser.find_element(By.ID, "shown").text == "1"
    search.clear()
    search.send_keys("big_spender")  # a field name
    wait(browser, lambda d: visible_names(d) == ["spend_profile"])
    search.clear()
    search.send_keys("shop-data spend")  # owner and tag
    wait(browser, lambda d: visible_names(d) == ["user_spend", "spend_profile"])

    # 3. a feature page: schema, lineage, definition, offline rows, a plot for a key
    browser.find_element(By.LINK_TEXT, "user_spend").click()
    wait(browser, lambda d: d.find_elements(By.ID, "schema"))
    schema = browser.find_element(By.ID, "schema").text
    assert "spent_1d float" in schema and "user_id str key" in schema
    assert "How much and how often each user buys" in browser.find_element(By.CLASS_NAME, "description").text
    lineage = browser.find_element(By.CSS_SELECTOR, "svg.lineage").text
    assert all(name in lineage for name in ("orders", "user_spend", "spend_profile"))
    assert "def user_spend(orders: Entity) -> Entity:" in browser.find_element(By.TAG_NAME, "pre").text
    assert "2,000 rows stored" in browser.find_element(By.TAG_NAME, "main").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.offline-rows tr")) == 21  # header + 20 rows
    Select(browser.find_element(By.NAME, "field")).select_by_visible_text("spent_1d")
    key = browser.find_element(By.NAME, "key.user_id")
    key.clear()
    key.send_keys("u2")
    browser.find_element(By.CSS_SELECTOR, "#plot-form button").click()
    wait(browser, lambda d: "spent_1d for user_id=u2" in d.find_element(By.CSS_SELECTOR, "svg.series").get_attribute("aria-label"))
    u2_rows = client.get_offline("user_spend").filter(client.get_offline("user_spend")["user_id"] == "u2").height
    assert f"({u2_rows} points)" in browser.find_element(By.CSS_SELECTOR, "svg.series").text
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000

    # 4. the live job page refreshes itself as rows arrive, rejected ones with their reason
    browser.get(server.url + "/ui/job")
    wait(browser, lambda d: "2,000" in d.find_element(By.CSS_SELECTOR, '[data-metric="rows in"]').text)
    wait(browser, lambda d: "running" in d.find_element(By.CSS_SELECTOR, '[data-metric="state"]').text)
    now = datetime.datetime.now(datetime.timezone.utc)
    with open(root / "data" / "orders.jsonl", "a") as log:
        log.write(json.dumps({"user_id": "u9", "product": "mug", "price": "free", "ordered_at": now.isoformat()}) + "\n")
        log.write(json.dumps({"user_id": "u9", "product": "mug", "price": 1.0, "ordered_at": "2000-01-01T00:00:00+00:00"}) + "\n")
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-metric="rejected"]').text.endswith("1"))
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-metric="late"]').text.endswith("1"))
    wait(browser, lambda d: "price" in d.find_element(By.CSS_SELECTOR, "table.rejected").text)
    wait(browser, lambda d: "2000-01-01" in d.find_element(By.CSS_SELECTOR, "table.late-rows").text)

    # 5. the lookup form: keys in, the on-demand result out (as get_on_demand computes it)
    browser.get(server.url + "/ui/lookup")
    Select(browser.find_element(By.ID, "feature-select")).select_by_visible_text("spend_profile")
    wait(browser, lambda d: d.current_url.endswith("feature=spend_profile"))
    browser.find_element(By.NAME, "key.user_id").send_keys("u3")
    browser.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    wait(browser, lambda d: d.current_url.endswith("key.user_id=u3"))
    result = wait(browser, lambda d: d.find_elements(By.ID, "lookup-result"))[0].text
    (expected,) = client.get_on_demand("spend_profile", [{"user_id": "u3"}])
    assert f"big_spender {expected['big_spender']}" in result
    assert f"spent_1d {expected['spent_1d']:.6g}" in result
    browser.find_element(By.NAME, "key.user_id").clear()
    browser.find_element(By.NAME, "key.user_id").send_keys("nobody")
    browser.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
    wait(browser, lambda d: "no value for {'user_id': 'nobody'}" in d.find_element(By.ID, "lookup-result").text)
