"""Issue 10 #1: the live dashboard, in a real headless Chromium against a live local cluster.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them) and
``selenium`` (the test extra); without them the tests skip and say which is missing.

``ACTORSCHED_DASHBOARD_SCREENSHOT=docs/dashboard.png pytest tests/integration/test_dashboard.py``
also retakes the README's screenshot: 4 workers running thousands of short tasks and
some failures, after about half a minute of load.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import actorsched
from actorsched.client import Client
from actorsched.localcluster import LocalCluster, wait_until

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
SCREENSHOT = os.environ.get("ACTORSCHED_DASHBOARD_SCREENSHOT", "")


def make_browser(width: int = 1400, height: int = 1000) -> Any:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("a headless browser is needed: apt-get install chromium chromium-driver "
                    f"(found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER})")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--hide-scrollbars", f"--window-size={width},{height}", "--lang=en-US"):
        options.add_argument(argument)
    try:
        return webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium could not be started by {CHROMEDRIVER}: {exc.msg}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = make_browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Client]]:
    """Two workers of two slots, and a client; for the whole module (start-up is the slow part)."""
    folder = tmp_path_factory.mktemp("dashboard")
    with LocalCluster(workers=2, slots=2, log_dir=str(folder), state_dir=str(folder / "state")) as cluster:
        with Client(cluster.client_endpoint) as client:
            cluster.wait_for_workers(client, 2)
            yield cluster, client


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def counter(driver: Any, state: str) -> int:
    text = text_of(driver, f"count-{state}").replace(",", "")
    return int(text) if text.isdigit() else -1


def eventually(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``check()`` until it is truthy; a WebDriverException (a DOM redrawn under us) counts as not yet."""
    def attempt() -> Any:
        try:
            return check()
        except WebDriverException:
            return None
    return wait_until(attempt, timeout_s, what, interval_s=0.1)


def test_the_dashboard_shows_the_workers_and_tasks_that_exist(browser: Any,
                                                              live: tuple[LocalCluster, Client]) -> None:
    cluster, client = live
    handles = [client.submit("actorsched.tasks:echo", i, task_id=f"shown-{i}") for i in range(5)]
    client.gather(handles, timeout=30)
    browser.get(f"http://{cluster.http_endpoint}/")
    assert browser.title == "actorsched"

    rows = eventually(lambda: len(rows := [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
                                           if r.text.startswith("worker-")]) == 2 and rows, 15,
                      "both workers in the workers table")
    assert sorted(r.split()[0] for r in rows) == ["worker-1", "worker-2"]
    assert all("ALIVE" in r and "closed" in r for r in rows), rows
    eventually(lambda: counter(browser, "SUCCEEDED") >= 5, 15, "the succeeded counter to count the echo tasks")
    eventually(lambda: "shown-4" in text_of(browser, "tasks"), 15, "the newest tasks in the task table")

    browser.find_element(By.ID, "f-id").send_keys("shown-")  # the id filter narrows the table to ours
    listed = eventually(lambda: (ids := [r.find_element(By.TAG_NAME, "td").text
                                         for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")])
                        and all(i.startswith("shown-") for i in ids) and ids, 15, "the id filter")
    assert listed == [f"shown-{i}" for i in reversed(range(5))]  # newest first
    assert "actorsched.tasks:echo" in text_of(browser, "tasks") and "SUCCEEDED" in text_of(browser, "tasks")
    browser.find_element(By.ID, "f-id").clear()


def test_a_task_page_shows_the_traceback_of_a_failing_task_as_text(browser: Any,
                                                                   live: tuple[LocalCluster, Client]) -> None:
    cluster, client = live
    message = "<img src=x onerror=\"document.title='owned'\"> went wrong"
    task_id = "fail-<b>bold</b>"
    failing = client.submit("actorsched.tasks:fail", message, task_id=task_id, max_attempts=2)
    client.gather([failing], timeout=30, return_exceptions=True)

    browser.get(f"http://{cluster.http_endpoint}/#/task/{urllib.parse.quote(task_id, safe='')}")
    body = eventually(lambda: (t := text_of(browser, "tp-body")) and "Attempt 2" in t and t, 15,
                      "the task page with both attempts")
    assert "Traceback (most recent call last)" in body and 'raise RuntimeError(message)' in body
    assert f"RuntimeError: {message}" in body  # the markup is shown as the text it is
    assert "actorsched.tasks:fail" in body and "worker-" in body
    assert task_id in text_of(browser, "tp-title") and "FAILED" in text_of(browser, "tp-title")
    page = browser.find_element(By.ID, "taskpage")
    assert page.find_elements(By.TAG_NAME, "img") == [] and page.find_elements(By.TAG_NAME, "b") == []
    assert browser.title == "actorsched"
    tracebacks = page.find_elements(By.CSS_SELECTOR, "pre.err")
    assert len(tracebacks) >= 2 and all("Traceback" in t.text for t in tracebacks[-2:])

    browser.find_element(By.LINK_TEXT, "← all tasks").click()  # and back to the table, which lists it
    Select(browser.find_element(By.ID, "f-state")).select_by_value("FAILED")
    eventually(lambda: task_id in text_of(browser, "tasks") and "went wrong" in text_of(browser, "tasks"), 15,
               "the failed task in the table filtered by state")


def test_a_task_page_shows_its_dependencies_and_its_output(browser: Any, live: tuple[LocalCluster, Client]) -> None:
    cluster, client = live
    line = "<script>document.title='owned'</script> said twice"
    first = client.submit("actorsched.tasks:echo", line, task_id="dep-first")
    client.submit("actorsched.tasks:noop", task_id="dep-second")
    loud = client.submit("actorsched.tasks:shout", actorsched.ref(first), 2, "both", task_id="loud",
                         deps=["dep-second"])  # writes the first one's result twice to stdout and stderr
    client.gather([loud], timeout=30)

    browser.get(f"http://{cluster.http_endpoint}/#/task/loud")
    body = eventually(lambda: (t := text_of(browser, "tp-body")) and "SUCCEEDED" in t and t, 15, "the task page")
    assert body.count(line) >= 4  # twice to stdout, twice to stderr, as text
    assert browser.find_element(By.ID, "taskpage").find_elements(By.TAG_NAME, "script") == []
    assert browser.title == "actorsched"
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#tp-body dd a")]
    assert sorted(links) == ["dep-first", "dep-second"]  # its deps, and the task whose result it takes
    browser.find_element(By.LINK_TEXT, "dep-first").click()
    eventually(lambda: "echo" in text_of(browser, "tp-body") and "dep-first" in text_of(browser, "tp-title"),
               15, "the page of the dependency")
    assert line in text_of(browser, "tp-body")  # its result, as text


def test_the_live_counters_move_while_tasks_run_without_a_reload(browser: Any,
                                                                 live: tuple[LocalCluster, Client]) -> None:
    cluster, client = live
    browser.get(f"http://{cluster.http_endpoint}/")
    eventually(lambda: counter(browser, "SUCCEEDED") >= 0, 15, "the page's first figures")
    browser.execute_script("window.__sameDocument = true")
    stop = threading.Event()

    def stream() -> None:  # a steady trickle of short tasks, as long as the test watches
        while not stop.is_set():
            client.submit_many([{"name": "actorsched.tasks:sleep", "args": [0.02]} for _ in range(8)])
            stop.wait(0.2)

    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    try:
        values = [counter(browser, "SUCCEEDED")]
        deadline = time.monotonic() + 20
        while len(values) < 3 and time.monotonic() < deadline:
            value = counter(browser, "SUCCEEDED")
            if value > values[-1]:
                values.append(value)
            time.sleep(0.1)
    finally:
        stop.set()
        feeder.join(10)
    assert len(values) >= 3, f"the succeeded counter moved only {values} in 20 s"
    assert browser.execute_script("return window.__sameDocument") is True  # no reload: the same document
    assert text_of(browser, "conn") == "live"
    legend = text_of(browser, "lg-tput")
    assert "succeeded" in legend and "succeeded –" not in legend


def test_beyond_loopback_the_page_works_once_the_browser_gave_the_token(browser: Any, tmp_path: Any) -> None:
    token = secrets.token_urlsafe(32)
    (tmp_path / "http.token").write_text(token)
    (tmp_path / "coordinator.toml").write_text(f'[http]\ntoken_file = "{tmp_path / "http.token"}"\n')
    args = ["--config", str(tmp_path / "coordinator.toml"), "--http", "0.0.0.0:0"]
    with LocalCluster(workers=1, slots=1, log_dir=str(tmp_path), state_dir=str(tmp_path / "state"),
                      coordinator_args=args) as cluster:
        port = cluster.http_endpoint.rpartition(":")[2]
        browser.delete_all_cookies()
        browser.get(f"http://127.0.0.1:{port}/")
        assert "401" in browser.find_element(By.TAG_NAME, "body").text  # no token: nothing but the way in
        browser.get(f"http://127.0.0.1:{port}/?token={token}")
        assert browser.current_url == f"http://127.0.0.1:{port}/"  # the token left the address bar
        eventually(lambda: text_of(browser, "conn") == "live" and "worker-1" in text_of(browser, "workers"), 15,
                   "the dashboard to fill with the token in its cookie")


@pytest.mark.skipif(not SCREENSHOT, reason="set ACTORSCHED_DASHBOARD_SCREENSHOT=docs/dashboard.png to retake it")
def test_screenshot_under_load(tmp_path: Any) -> None:
    driver = make_browser(1400, 1250)
    try:
        with LocalCluster(workers=4, slots=2, log_dir=str(tmp_path), state_dir=str(tmp_path / "state")) as cluster, \
                Client(cluster.client_endpoint) as client:
            cluster.wait_for_workers(client, 4)
            driver.get(f"http://{cluster.http_endpoint}/")
            started, batch, filtered = time.monotonic(), 0, False
            while time.monotonic() - started < 65:  # the charts show the last minute; the load stays on
                specs: list[dict[str, Any]] = [{"name": "actorsched.tasks:sleep", "args": [0.002], "priority": 5}
                                               for _ in range(150)]
                specs += [{"name": "actorsched.tasks:echo", "args": [batch]} for _ in range(100)]
                specs += [{"name": "actorsched.tasks:spin", "args": [0.05], "priority": -5} for _ in range(2)]
                specs.append({"name": "actorsched.tasks:sleep", "args": [0.3], "priority": 1})
                if batch % 4 == 0:
                    specs.append({"name": "actorsched.tasks:fail", "args": [f"bad input in batch {batch}"],
                                  "max_attempts": 2})
                client.submit_many(specs)
                batch += 1
                time.sleep(0.2)
                if not filtered and time.monotonic() - started > 60:
                    Select(driver.find_element(By.ID, "f-state")).select_by_value("FAILED")
                    filtered = True
            driver.save_screenshot(SCREENSHOT)
    finally:
        driver.quit()
