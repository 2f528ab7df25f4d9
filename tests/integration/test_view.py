"""The live view (GET /thunderagent/view) in a real headless Chromium (Debian's), driven by
Playwright, against a real server with --api-key: the page asks for the key and keeps it in
the tab's session storage only; a new program shows within a second, paused when an operator
pauses it; an id that is HTML runs nothing; no request leaves the server; with 500 programs
a refresh stays under 250 ms. Also the events route's answers to bad input."""

from __future__ import annotations

import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration.server import Server, wait_until
from tests.integration.test_sidecar_server import find_sidecar

pytestmark = pytest.mark.server
KEY = "view-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("view-bases") / "base"
    base.mkdir()
    (base / "README").write_text("base\n")
    return base.parent


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, bases):
    """With its sidecar, whose reports the page shows (the page never calls it)."""
    server = Server("view", ["--api-key", KEY, "--thunderagent-sidecar",
                             "--thunderagent-sidecar-base-root", str(bases)], {},
                    tmp_path_factory.mktemp("view"))
    request.addfinalizer(server.stop)
    return server.wait_ready()


@pytest.fixture(scope="module")
def sidecar(server):
    return find_sidecar(server)[0]


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.fail("Chromium is missing: scripts/test.sh installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page()
        page.requests_seen = []
        page.dialogs_seen = []
        page.on("request", lambda r: page.requests_seen.append(r.url))
        page.on("dialog", lambda d: (page.dialogs_seen.append(d.message), d.dismiss()))
        yield page
        browser.close()


def wait_js(page, expression: str, timeout_s: float):
    """Poll ``expression`` in the page until truthy (Playwright's wait_for_function evaluates
    strings with eval, which the page's Content-Security-Policy forbids, as it should)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return
        page.wait_for_timeout(25)
    raise AssertionError(f"not within {timeout_s:g} s in the page: {expression}")


def call(server, pid: str, n: int = 2):
    response = requests.post(f"{server.url}/generate", headers={**AUTH, "X-Program-Id": pid},
                             timeout=120, json={"input_ids": [7] * 20,
                                                "sampling_params": {"max_new_tokens": n}})
    assert response.status_code == 200, response.text
    return time.monotonic()


def row_selector(pid: str) -> str:
    return f'tr[data-program="{pid}"]'


def test_the_page_asks_for_the_key_and_keeps_it_in_the_tabs_session_storage(server, page):
    page.goto(f"{server.url}/thunderagent/view")
    page.wait_for_selector("#keyform.shown", timeout=5000)
    assert "needs its API key" in page.text_content("#status")
    page.fill("#key", "wrong")
    page.click("#keyform button")
    wait_js(page, "document.getElementById('status').textContent.includes('refused')", 5)
    page.fill("#key", KEY)
    page.click("#keyform button")
    wait_js(page, "document.getElementById('status').textContent.startsWith('live')", 5)
    assert page.evaluate("sessionStorage.getItem('thunderagent-view-key')") == KEY
    assert page.evaluate("localStorage.length") == 0 and document_cookie(page) == ""
    assert all(KEY not in url for url in page.requests_seen)  # never in a URL


def document_cookie(page) -> str:
    return page.evaluate("document.cookie")


def test_a_new_program_shows_within_a_second_and_paused_when_an_operator_pauses_it(server,
                                                                                    page):
    pid = "view-agent-1"
    answered = call(server, pid)
    page.wait_for_selector(row_selector(pid), timeout=1000)
    assert time.monotonic() - answered < 1.0
    # the page refreshes at most once a second: news that comes within a second of a
    # refresh waits for the next one; after a quiet second it shows at once
    page.wait_for_timeout(1100)
    assert requests.post(f"{server.url}/programs/{pid}/pause", headers=AUTH,
                         timeout=30).status_code == 200
    paused = time.monotonic()
    page.wait_for_selector(row_selector(pid) + ".paused", timeout=1000)
    assert time.monotonic() - paused < 1.0
    wait_js(page, "[...document.querySelectorAll('#log div')].some(d => "
            f"d.textContent.includes(' pause ') && d.textContent.endsWith('{pid}  "
            "reason=operator operator=true kv=keep'))", 2)
    requests.post(f"{server.url}/programs/{pid}/resume", headers=AUTH, timeout=30)
    requests.post(f"{server.url}/programs/{pid}/release", headers=AUTH, timeout=30)


@pytest.mark.parametrize("pid", ["<img/src=x/onerror=alert(1)>", "<script>alert(2)</script>"])
def test_an_id_that_is_html_is_shown_as_text_and_runs_nothing(server, page, pid):
    call(server, pid)
    page.wait_for_selector(f"#rows tr:has-text({pid!r})", timeout=3000)
    assert page.eval_on_selector_all("#rows td", "cells => cells.map(c => c.textContent)")\
        .count(pid) == 1
    assert page.query_selector_all("img") == [] and len(page.query_selector_all("script")) == 1
    page.wait_for_timeout(1500)  # another refresh or two
    assert page.dialogs_seen == []
    requests.post(f"{server.url}/programs/release", headers={**AUTH, "X-Program-Id": pid},
                  json={"program_id": pid}, timeout=30)


def cells(page, pid: str) -> dict:
    """The program's row, column by column (the table's header names)."""
    return page.evaluate(
        "(pid) => { const row = [...document.querySelectorAll('#rows tr')]"
        ".find(r => r.dataset.program === pid); if (!row) return null;"
        " const names = [...document.querySelectorAll('thead th')].map(th => th.textContent);"
        " return Object.fromEntries([...row.children].map((td, i) => [names[i], td.textContent]));"
        " }", pid)


def test_the_sidecars_environments_and_running_commands_show_in_the_programs_row(
        server, page, sidecar, bases):
    pid = "view-tools-1"
    call(server, pid)
    env_id = sidecar.create(pid, bases / "base")
    row = wait_until(lambda: (c := cells(page, pid)) and c["environments"].startswith("1 (1")
                     and c, "the environment in the row", deadline_s=5)
    # the disk use shows once the sidecar's GC tick has measured it (0 B or a few KB here)
    assert re.fullmatch(r"1 \(1 running\) \d+(\.\d)? K?B", row["environments"]), row
    assert row["running commands"] == ""
    cmd = "sleep 3; echo '<u>under</u>'"
    runner = threading.Thread(target=sidecar.exec, args=(env_id, cmd), kwargs={"tool": "pytest"})
    runner.start()
    started = time.monotonic()
    row = wait_until(lambda: (c := cells(page, pid)) and c["running commands"] and c,
                     "the running command in the row", deadline_s=5)
    print(f"a running command showed {time.monotonic() - started:.2f} s after it started")
    assert row["running commands"].startswith("pytest: " + cmd + " (")
    assert page.query_selector_all("u") == [] and page.dialogs_seen == []
    runner.join(30)
    wait_until(lambda: cells(page, pid)["running commands"] == "", "the command gone", 5)
    assert sidecar.session.delete(f"{sidecar.url}/envs/{env_id}", timeout=30).status_code == 200
    wait_until(lambda: cells(page, pid)["environments"] == "0", "the environment gone", 5)
    requests.post(f"{server.url}/programs/{pid}/release", headers=AUTH, timeout=30)


def test_the_page_asks_nothing_of_any_host_but_the_server(server, page):
    assert page.requests_seen and all(url.startswith(server.url + "/")
                                      for url in page.requests_seen)
    paths = {url[len(server.url):].split("?")[0] for url in page.requests_seen}
    assert paths == {"/thunderagent/view", "/thunderagent/view.js", "/programs",
                     "/programs/events", "/metrics"}


def test_with_500_programs_a_refresh_stays_under_250_ms(server, page):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: call(server, f"many-{i:03d}", n=1), range(500)))
    wait_js(page, "document.querySelectorAll('#rows tr').length >= 500", 10)
    refreshes = []
    for _ in range(5):
        seen = page.evaluate("window.thunderagentRefreshes")
        wait_js(page, f"window.thunderagentRefreshes > {seen}", 5)
        refreshes.append(page.evaluate("window.thunderagentLastRefreshMs"))
    print(f"refresh with 500 programs: {sorted(refreshes)} ms")
    assert max(refreshes) < 250


def test_the_events_route_answers_bad_input_with_400s(server):
    for query in ("since=abc", "since=-1", "since=99999999999999999999", "limit=0",
                  "limit=5001", "wait=11", "wait=nan", "wait=-1"):
        response = requests.get(f"{server.url}/programs/events?{query}", headers=AUTH,
                                timeout=30)
        assert response.status_code == 400 and "error" in response.json(), query
    assert requests.get(f"{server.url}/programs/events", timeout=30).status_code == 401
    start = time.monotonic()
    last = requests.get(f"{server.url}/programs/events?since=0&limit=1", headers=AUTH,
                        timeout=30).json()["last"]
    quiet = requests.get(f"{server.url}/programs/events?since={last}&wait=0.5", headers=AUTH,
                         timeout=30).json()
    assert quiet["events"] == [] and 0.4 < time.monotonic() - start < 5
    assert requests.post(f"{server.url}/thunderagent/view", timeout=30).status_code == 405
