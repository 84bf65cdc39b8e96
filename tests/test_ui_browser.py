"""What a person sees in the Dagster UI, in a real (headless) Chromium.

One universe batch (two attempts: planted leaks) is materialized in-process the way
``cohortflow run`` does it, then ``dagster dev`` serves that instance and Debian's
Chromium, driven through chromedriver's W3C WebDriver HTTP API (no Selenium package),
opens the lineage (a group per target), an asset's metadata (a table and a plot), the
checks of attempts 0 and 1, and the run page of a run launched from the UI while its
step logs arrive. Screenshots land in ``test-output/screenshots/``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from dagster_dev import (
    ADD_PARTITION,
    LAUNCH_BACKFILL,
    REPOSITORY,
    RUNS,
    TEST_OUTPUT,
    dagster_dev,
    free_port,
    make_workspace,
    stop_group,
)

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
    "--window-size=1920,1080",
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

    def click_xpath(self, xpath: str) -> None:
        """A real (pointer) click on the first interactable element matching ``xpath``."""
        found = self.call(f"{self.base}/elements", "POST", {"using": "xpath", "value": xpath})
        for element in found:
            element_id = next(iter(element.values()))
            try:
                self.call(f"{self.base}/element/{element_id}/click", "POST", {})
                return
            except AssertionError:  # hidden or covered: try the next match
                continue
        raise AssertionError(f"nothing clickable matches {xpath} ({len(found)} matches)")

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
            with suppress(AssertionError, urllib.error.URLError):
                WebDriver.call(browser.base, "DELETE")
    finally:
        # chromedriver leads its own group: Chromium and its helpers go with it
        stop_group(driver, grace_s=15)
        shutil.rmtree(profile, ignore_errors=True)


PLOT_METADATA = """
query Plot($key: AssetKeyInput!) {
  assetNodes(assetKeys: [$key]) {
    assetMaterializations(limit: 1) {
      partition
      metadataEntries { label ... on MarkdownMetadataEntry { mdStr } }
    }
  }
}
"""

# every <img> whose source is an inline PNG, with the text of the dialog that holds it
INLINE_PNGS = """
return [...document.images].filter(i => i.src.startsWith('data:image/png;base64,')).map(i => {
  const box = i.getBoundingClientRect();
  const dialog = i.closest('[role="dialog"], .bp5-dialog, .bp4-dialog');
  return {src: i.src, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
          width: box.width, height: box.height, dialog: dialog ? dialog.innerText : ''};
});
"""


def _stored_plot(dev: Any, asset: list[str], label: str) -> tuple[str, str]:
    """(partition, data URL) of the markdown image ``label`` of the latest materialization."""
    node = dev.graphql(PLOT_METADATA, {"key": {"path": asset}})["assetNodes"][0]
    event = node["assetMaterializations"][0]
    md = next(e["mdStr"] for e in event["metadataEntries"] if e["label"] == label)
    match = re.fullmatch(r"!\[[^\]]*\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", md.strip())
    assert match, md[:200]
    return event["partition"], match.group(1)


@pytest.mark.slow
@pytest.mark.browser
def test_ui_shows_lineage_metadata_checks_and_live_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from cohortflow_dagster.cli.runner import run_universe

    # one batch, two attempts (planted leaks), materialized as `cohortflow run` does it
    ws = make_workspace(tmp_path, max_concurrent_runs=1, with_leaks=True)
    for key, value in ws.env().items():
        if key.startswith(("DAGSTER_", "COHORTFLOW_")):
            monkeypatch.setenv(key, value)
    result = run_universe(str(ws.data_dir), str(ws.output_root), str(ws.settings_path))
    batch = result.intake.record.batch
    assert [a.attempt for a in result.attempts] == [0, 1]

    with dagster_dev(ws, "ui_browser") as dev, chromium_session() as browser:
        try:
            _look_at_the_ui(dev, browser, batch)
        except BaseException:
            browser.screenshot("failure.png")  # what the page showed when it failed
            raise


def _look_at_the_ui(dev: Any, browser: WebDriver, batch: str) -> None:
    # (1) the lineage: one group per target, the data and the reports beside them
    browser.get(f"{dev.url}/asset-groups")
    text = browser.wait_for_text("Global asset lineage", "fwd_ret_5", "fwd_ret_10", "reports")
    assert "data" in text
    _expand_all_groups(browser)
    browser.wait_for_text("universe_bars", "feature_exclusions", "featureset", "portfolio")
    time.sleep(3)  # cosmetic: let the nodes' materialization colours arrive
    browser.screenshot("01_lineage.png")

    # (2) one asset's metadata: a table (with its schema) and a plot
    last = f"1|{batch}"
    browser.get(f"{dev.url}/assets/fwd_ret_5/feature_importances?view=events")
    browser.wait_for_text(
        "combined_importance",
        "importance_plot",
        "dagster/row_count",
        f"Partition {last} materialized",
    )
    browser.wait_for_text("feature", "importance", "rank", "share")  # the table's columns
    partition, stored = _stored_plot(dev, ["fwd_ret_5", "feature_importances"], "importance_plot")
    assert partition == last
    browser.click_xpath(
        "//tr[.//*[normalize-space(text())='importance_plot']]"
        "//*[normalize-space(text())='[Show Markdown]']"
    )
    images = _wait_for_images(browser)
    browser.screenshot("02_importances_table_and_plot.png")
    assert [i["src"] for i in images] == [stored]
    assert images[0]["naturalWidth"] > 500 and images[0]["naturalHeight"] > 200, images[0]

    # (3) the checks of attempts 0 and 1: the leak check warns on 0 (attempt 1 fixes it)
    browser.get(f"{dev.url}/assets/fwd_ret_5/feature_exclusions?view=checks")
    text = browser.wait_for_text("no_leaks_remain", "attempt_sealed")
    browser.click_xpath("//*[normalize-space(text())='no_leaks_remain']")
    browser.click_xpath("//*[normalize-space(text())='Execution history']")
    text = browser.wait_for_text(f"0|{batch}", f"1|{batch}", "leaks found in attempt 0")
    browser.screenshot("03_checks_attempts_0_and_1.png")
    assert "attempt 1 runs without them" in text

    # (4) a run page with live step logs: a new attempt launched from the UI, watched
    added = dev.graphql(ADD_PARTITION, {"selector": REPOSITORY, "name": "attempt", "key": "2"})
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
    keys = [
        n["assetKey"]["path"]
        for n in dev.graphql("query { assetNodes { assetKey { path } } }")["assetNodes"]
    ]
    launched = dev.graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "partitionNames": [f"2|{batch}"],
                "assetSelection": [{"path": k} for k in keys],
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    run_id = _wait_for_started_run(dev, f"2|{batch}")
    browser.get(f"{dev.url}/runs/{run_id}")
    text = browser.wait_for_text("computed in", timeout_s=400)
    browser.screenshot("04_run_live_logs.png")
    assert "fwd_ret_" in text


def _wait_for_started_run(dev: Any, partition: str, timeout_s: float = 300) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        for run in dev.graphql(RUNS)["runsOrError"]["results"]:
            tags = {t["key"]: t["value"] for t in run["tags"]}
            if tags.get("dagster/partition") == partition and run["status"] in (
                "STARTED",
                "SUCCESS",
            ):
                return run["runId"]
        time.sleep(2)
    raise AssertionError(f"no run of {partition} started")


def _expand_all_groups(browser: WebDriver) -> None:
    """The lineage graph starts with its groups collapsed; its options menu (the unlabelled
    gear button under the zoom buttons) expands them all."""
    toggle_menu = """
        const gear = [...document.querySelectorAll('button')].find(b => !b.textContent.trim() &&
          [...b.querySelectorAll('*')].some(i => (getComputedStyle(i).maskImage || '').includes('/settings.')));
        if (!gear) return false;
        gear.click();
        return true;
    """
    assert browser.script(toggle_menu), "the lineage graph has no options button"
    text = browser.wait_for_text("all groups", timeout_s=20)
    if "Expand all groups" in text:
        browser.click_xpath("//*[text()='Expand all groups']")
    if "all groups" in browser.text():  # the menu stays open after a click: close it
        browser.script(toggle_menu)
    t0 = time.monotonic()
    while "all groups" in browser.text() and time.monotonic() - t0 < 10:
        time.sleep(0.3)


def _wait_for_images(browser: WebDriver, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        images = browser.script(INLINE_PNGS)
        if images and all(i["naturalWidth"] > 0 for i in images):
            return images
        time.sleep(0.5)
    raise AssertionError(f"no inline PNG appeared; the page shows:\n{browser.text()[:2000]}")
