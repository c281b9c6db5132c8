"""End to end: the admin port's live dashboard (GET /, nmc/dashboard.html) in a real headless
Chromium driven by Selenium, against a real cluster.

The browser is Debian's `chromium` + `chromium-driver`, installed by scripts/ensure-browser.sh
from the session fixture below: nothing is downloaded from a browser CDN (Selenium is given the
driver's path, so Selenium Manager never runs). Without a browser the test skips, or under CI
(CI=true) fails with the one-line reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass

import pytest
import requests

from conftest import ROOT, Load, wait_until
from test_admin import AdminCluster

DASH = "–"


@dataclass
class Browser:
    chromium: str
    chromedriver: str
    setup_seconds: float


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"no headless browser for the dashboard test: {reason}", pytrace=False)
    pytest.skip(f"no headless browser for the dashboard test: {reason}")


@pytest.fixture(scope="session")
def browser() -> Browser:
    """Chromium and chromedriver, installed first when missing (Debian as root)."""
    started = time.monotonic()
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    try:
        result = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-browser.sh")],
                                capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        _unavailable("scripts/ensure-browser.sh did not finish within 900s")
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        _unavailable(lines[-1] if lines else f"scripts/ensure-browser.sh exited {result.returncode}")
    chromium, chromedriver = result.stdout.strip().splitlines()[-2:]
    return Browser(chromium, chromedriver, time.monotonic() - started)


@pytest.fixture
def chrome(browser, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser.chromium
    for argument in ("--headless=new", "--no-sandbox",  # root in a container: no sandbox
                     "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,700",
                     "--no-proxy-server", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-default-apps"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=browser.chromedriver,
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    yield driver
    driver.quit()


# What the page shows, read in one script (no stale elements while it re-renders every second).
ROWS_JS = """return [...document.querySelectorAll('#replicas tr')].map(row => ({
    name: row.querySelector('td.name').textContent,
    state: row.querySelector('td.state').textContent,
    port: row.querySelector('td.port').textContent,
    container: row.querySelector('td.container').textContent,
    exit: row.querySelector('td.exit').textContent}));"""


def page_rows(driver) -> list[dict]:
    return driver.execute_script(ROWS_JS)


def status_rows(status: dict) -> list[dict]:
    return [{"name": r["name"], "state": r["state"], "port": str(r["port"]),
             "container": (r["container_id"] or DASH)[:12],
             "exit": DASH if r["last_exit_code"] is None else str(r["last_exit_code"])}
            for r in status["replicas"]]


def docker_ps(cluster_name: str) -> dict[str, str]:
    """name -> full container id of the cluster's running containers, from `docker ps`."""
    out = subprocess.run(["docker", "ps", "--no-trunc", "--filter", f"label=nmc.cluster={cluster_name}",
                          "--format", "{{.Names}} {{.ID}}"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_the_dashboard_shows_the_replicas_and_scales_up(chrome, browser, run_nmc, cluster_name,
                                                         tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    test_started = time.monotonic()
    cluster = AdminCluster(run_nmc, cluster_name)
    status = wait_until(lambda: _status_or_none(cluster), timeout=10, what="GET /status")

    # the page: one HTML file of nmc's own, nothing from elsewhere, not frameable
    answer = requests.get(cluster.admin + "/", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", answer.text)
    assert references and all(not re.match(r"^[a-z]+:|//", ref) or ref.startswith("data:")
                              for ref in references), references
    assert requests.post(cluster.admin + "/", timeout=10, headers=cluster.auth).status_code == 405

    # rows appear and match GET /status: names, states, ports, containers; opened from the URL
    # with the admin token, as nmc printed it, so that its buttons may change the cluster
    token = cluster.auth["Authorization"].split()[1]
    assert f"{cluster.admin}/?token={token}" in cluster.process.log
    chrome.get(f"{cluster.admin}/?token={token}")
    assert chrome.current_url == cluster.admin + "/"  # the token left the URL for a cookie
    wait = WebDriverWait(chrome, 20, poll_frequency=0.2)
    wait.until(lambda d: len(page_rows(d)) == 2 and all(r["state"] == "ready" for r in page_rows(d)))
    wait.until(lambda d: page_rows(d) == status_rows(cluster.status()))
    assert [r["name"] for r in page_rows(chrome)] == [f"{cluster_name}-{r['port']}"
                                                     for r in status["replicas"]]
    assert chrome.find_element(By.ID, "cluster").text == cluster_name
    assert chrome.find_element(By.ID, "image").text.startswith(status["image"] + " (")
    assert chrome.find_element(By.ID, "total-ready").text == "2 / 2"
    assert chrome.title == f"nmc {cluster_name}"

    # the page's own arithmetic, on fixed numbers (the relay's counting is not needed for it):
    # 10 requests in one second, all between 5 and 10 ms
    before = [[0.005, 2], [0.01, 2], [0.025, 2], ["+Inf", 2]]
    after = [[0.005, 2], [0.01, 12], [0.025, 12], ["+Inf", 12]]
    window = chrome.execute_script(
        "windowed({name: 't', requests: 2, latency_buckets: arguments[0]}, 1000);"
        "return windowed({name: 't', requests: 12, latency_buckets: arguments[1]}, 2000);",
        before, after)
    assert window["rate"] == pytest.approx(10)
    assert window["p50"] == pytest.approx(0.0075) and window["p99"] == pytest.approx(0.00995)
    assert chrome.execute_script("return quantile(0.5, arguments[0])",
                                 [[0.005, 0], ["+Inf", 0]]) is None  # no request: "–"
    assert chrome.execute_script("return ms(quantile(0.99, arguments[0]))",
                                 [[10.0, 0], ["+Inf", 3]]) == "> 10000"

    # scale up: the buttons are disabled while it runs, the answer's message is shown, and a
    # third row appears and gets ready
    scale_up = chrome.find_element(By.ID, "scale-up")
    wait.until(lambda d: scale_up.is_enabled())
    chrome.execute_script("""
        window.sawDisabled = false;
        new MutationObserver(() => {
          if (['scale-up', 'scale-down', 'rollout'].every(id => document.getElementById(id).disabled))
            window.sawDisabled = true;
        }).observe(document.querySelector('.actions'), {attributes: true, subtree: true});""")
    scale_up.click()
    WebDriverWait(chrome, 90, poll_frequency=0.2).until(
        lambda d: d.find_element(By.ID, "message").get_attribute("class") in ("ok", "error"))
    message = chrome.find_element(By.ID, "message")
    assert message.get_attribute("class") == "ok", message.text
    assert message.text.startswith("scaled from 2 to 3 replicas: started "), message.text
    assert chrome.execute_script("return window.sawDisabled") is True
    wait.until(lambda d: len(page_rows(d)) == 3 and all(r["state"] == "ready" for r in page_rows(d)))
    status = cluster.status()
    wait.until(lambda d: page_rows(d) == status_rows(status))
    assert [r["state"] for r in status["replicas"]] == ["ready"] * 3
    new_name = message.text.rsplit(" ", 1)[-1]
    assert new_name in [r["name"] for r in page_rows(chrome)]
    containers = docker_ps(cluster_name)
    assert containers == {r["name"]: r["container_id"] for r in status["replicas"]}
    assert len(containers) == 3
    wait.until(lambda d: d.find_element(By.ID, "scale-down").is_enabled() and scale_up.is_enabled())
    assert chrome.find_element(By.ID, "total-ready").text == "3 / 3"

    # what a cross-site form could send (valid JSON, as text/plain) changes nothing
    refused = requests.post(cluster.admin + "/scale", data='{"replicas": 1}', timeout=10,
                            headers={"Content-Type": "text/plain", **cluster.auth})
    assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    assert len(cluster.status()["replicas"]) == 3

    severe = [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe

    screenshot = tmp_path / "dashboard.png"
    assert chrome.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    rows = page_rows(chrome)
    with capsys.disabled():
        print(f"\ndashboard screenshot: {screenshot} ({screenshot.stat().st_size} bytes): "
              f"cluster {cluster_name}, image {chrome.find_element(By.ID, 'image').text}, "
              f"{chrome.find_element(By.ID, 'total-ready').text} ready, rows "
              + ", ".join(f"{r['name']} {r['state']} port {r['port']} {r['container']}" for r in rows)
              + f"; message {message.text!r}")
        print(f"browser set-up (scripts/ensure-browser.sh, once per session): "
              f"{browser.setup_seconds:.1f}s; this test: {time.monotonic() - test_started:.1f}s")


def _status_or_none(cluster: AdminCluster) -> dict | None:
    try:
        return cluster.status()
    except requests.RequestException:
        return None


CHARTS_JS = """return Object.fromEntries(['rate', 'latency', 'errors'].map(id => {
    const svg = document.getElementById('chart-' + id);
    const lines = [...svg.querySelectorAll('polyline')];
    return [id, {points: Number(svg.dataset.points), series: lines.map(l => l.dataset.series),
                 cluster: Number((lines.find(l => l.dataset.series === 'cluster') || {dataset: {points: 0}}).dataset.points)}];
  }));"""
EVENTS_JS = """return [...document.querySelectorAll('#events li')].map(item => ({
    replica: item.dataset.replica, level: item.className, text: item.textContent}));"""


def test_the_charts_carry_the_last_minutes_and_the_events_show_a_kill(chrome, run_nmc,
                                                                       cluster_name, docker_client,
                                                                       tmp_path, capsys):
    from selenium.webdriver.support.ui import WebDriverWait

    cluster = AdminCluster(run_nmc, cluster_name)
    token = cluster.auth["Authorization"].split()[1]
    load = Load(cluster.url, clients=2, limit=120)
    try:
        chrome.get(f"{cluster.admin}/?token={token}")
        wait = WebDriverWait(chrome, 60, poll_frequency=0.5)
        # two readings of the counts (5 s apart) make a point, three a line; the page asks
        # every 5 s
        wait.until(lambda d: all(chart["cluster"] >= 2 for chart in
                                 d.execute_script(CHARTS_JS).values()))
        charts = chrome.execute_script(CHARTS_JS)
        replicas = sorted(r["name"] for r in cluster.status()["replicas"])
        assert sorted(set(charts["rate"]["series"]) - {"cluster"}) == replicas, charts
        assert "cluster" in charts["latency"]["series"]
        history = requests.get(cluster.admin + "/history", timeout=10).json()
        assert history["points"][-1]["cluster"]["requests_per_second"] > 0

        victim = replicas[0]
        docker_client.containers.get(victim).kill()  # the test's own docker kill
        wait.until(lambda d: any(e["replica"] == victim and "exited with code 137" in e["text"]
                                 for e in d.execute_script(EVENTS_JS)))
        events = chrome.execute_script(EVENTS_JS)
        down = [e for e in events if e["replica"] == victim and "-> down" in e["text"]]
        assert down and down[0]["level"] == "warning", events
        wait.until(lambda d: any(e["replica"] == victim and "starting -> ready" in e["text"]
                                 for e in d.execute_script(EVENTS_JS)))  # and its replacement
        # a replica killed out of memory, as /status says it (tests/test_limits.py makes a real
        # one): the page's own rendering of that status, on a copy of the latest with it
        exit_cell = chrome.execute_script(
            "const status = structuredClone(latest);"
            "Object.assign(status.replicas[0], {last_exit_code: 137, last_exit_out_of_memory: true});"
            "render(status, performance.now());"
            "return document.querySelector('#replicas tr td.exit').textContent;")
        assert exit_cell == "137 (out of memory)"
    finally:
        load.stop()
    severe = [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
    screenshot = tmp_path / "dashboard-history.png"
    assert chrome.save_screenshot(str(screenshot))
    with capsys.disabled():
        charts = chrome.execute_script(CHARTS_JS)
        print(f"\ndashboard screenshot: {screenshot} ({screenshot.stat().st_size} bytes): charts "
              + ", ".join(f"{name} {chart['points']} points in {len(chart['series'])} lines"
                          for name, chart in charts.items())
              + f"; {len(chrome.execute_script(EVENTS_JS))} events, newest: "
              + chrome.execute_script(EVENTS_JS)[0]["text"])
