"""What a person sees in the Dagster UI, in a real (headless) Chromium.

One universe batch is materialized in-process the way ``cohortflow run`` does it, then
``dagster dev`` serves that instance and Debian's Chromium, driven through chromedriver's
W3C WebDriver HTTP API (no Selenium package needed), opens the asset graph, the
partitions of ``fwd_ret_5/oof_dataset`` and the importance plot of
``fwd_ret_5/feature_importances``. Screenshots land in ``test-output/screenshots/``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dagster_dev import TEST_OUTPUT, dagster_dev, free_port, make_workspace

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = TEST_OUTPUT / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
]
PAGE_TIMEOUT_S = 120.0  # the UI's first GraphQL answers are slow on 2 shared cores


def _browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)"
    if not Path(CHROMEDRIVER).is_file():
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


class WebDriver:
    """The few W3C WebDriver commands the test needs, over chromedriver's HTTP API."""

    def __init__(self, base: str, session_id: str) -> None:
        self.base = f"{base}/session/{session_id}"

    @staticmethod
    def call(url: str, method: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=180) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"WebDriver {method} {url}: {exc.read()[:2000]!r}") from None

    def get(self, url: str) -> None:
        self.call(f"{self.base}/url", "POST", {"url": url})

    def script(self, body: str, *args: Any) -> Any:
        return self.call(f"{self.base}/execute/sync", "POST", {"script": body, "args": list(args)})

    def text(self) -> str:
        return str(self.script("return document.body ? document.body.innerText : '';"))

    def wait_for_text(self, *needles: str, timeout_s: float = PAGE_TIMEOUT_S) -> str:
        """Wait until the page's visible text holds every needle; return that text."""
        t0, text = time.monotonic(), ""
        while time.monotonic() - t0 < timeout_s:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(1.0)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"page never showed {missing}; it shows:\n{text[:3000]}")

    def click_text(self, label: str) -> bool:
        """Click the innermost visible element whose own text is ``label``."""
        return bool(
            self.script(
                """
                const label = arguments[0];
                const all = [...document.querySelectorAll('button, a, span, div')];
                const hit = all.find(e => e.offsetParent !== null && e.textContent.trim() === label
                    && ![...e.children].some(c => c.textContent.trim() === label));
                if (!hit) return false;
                hit.scrollIntoView({block: 'center'});
                hit.click();
                return true;
                """,
                label,
            )
        )

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        path.write_bytes(base64.b64decode(self.call(f"{self.base}/screenshot", "GET")))
        return path


@contextmanager
def chromium_session() -> Iterator[WebDriver]:
    """chromedriver on a free port driving a headless Chromium with a fresh profile."""
    port = free_port()
    profile = tempfile.mkdtemp(prefix="cohortflow-chromium-")
    driver = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if WebDriver.call(f"{base}/status", "GET")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.3)
        options = {"binary": str(CHROMIUM), "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        session = WebDriver.call(
            f"{base}/session",
            "POST",
            {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}},
        )
        browser = WebDriver(base, session["sessionId"])
        try:
            yield browser
        finally:
            try:
                WebDriver.call(browser.base, "DELETE")
            except (AssertionError, urllib.error.URLError):
                pass
    finally:
        # chromedriver leads its own group: Chromium and its helpers go with it
        try:
            os.killpg(driver.pid, signal.SIGTERM)
            driver.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.browser
def test_ui_shows_the_graph_the_partitions_and_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from cli.runner import run_universe

    ws = make_workspace(tmp_path, max_concurrent_runs=1, with_leaks=False)
    for key, value in ws.env().items():
        if key.startswith(("DAGSTER_", "COHORTFLOW_")):
            monkeypatch.setenv(key, value)
    result = run_universe(str(ws.data_dir), str(ws.output_root), str(ws.settings_path))
    batch = result.intake.record.batch
    attempts = [a.attempt for a in result.attempts]

    with dagster_dev(ws, "ui_browser") as dev, chromium_session() as browser:
        # (1) the asset graph: every group and the assets of the data group
        browser.get(f"{dev.url}/asset-groups")
        graph_text = browser.wait_for_text("universe_bars", "feature_panel")
        browser.screenshot("01_asset_graph.png")
        for group in ("data", "leakage", "target_ranking", "feature_selection", "training"):
            assert group in graph_text

        # (2) the partitions of one partitioned asset: the batch and attempt keys
        browser.get(f"{dev.url}/assets/fwd_ret_5/oof_dataset?view=partitions")
        browser.wait_for_text(batch, "universe_batch", "attempt")
        browser.screenshot("02_oof_dataset_partitions.png")
        assert browser.script(
            "return document.body.innerText.includes(arguments[0]);", f"{len(attempts)}"
        )

        # (3) the importance plot: a markdown image in the latest materialization's metadata
        browser.get(f"{dev.url}/assets/fwd_ret_5/feature_importances?view=events")
        browser.wait_for_text("importance_plot")
        image = _find_data_png(browser)
        browser.screenshot("03_feature_importances_plot.png")
        assert image["width"] > 100 and image["height"] > 50, image
