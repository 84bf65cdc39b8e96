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
from dagster_dev import TEST_OUTPUT, dagster_dev, free_port, make_workspace, stop_group

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
def test_ui_shows_the_graph_the_partitions_and_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from cohortflow_dagster.partitions import attempt_key
    from cohortflow_dagster.cli.runner import run_universe

    # one batch, materialized in-process exactly as `cohortflow run` does
    ws = make_workspace(tmp_path, max_concurrent_runs=1, with_leaks=False)
    for key, value in ws.env().items():
        if key.startswith(("DAGSTER_", "COHORTFLOW_")):
            monkeypatch.setenv(key, value)
    result = run_universe(str(ws.data_dir), str(ws.output_root), str(ws.settings_path))
    batch = result.intake.record.batch
    n_attempts = len(result.attempts)
    last_key = str(attempt_key(batch, result.attempts[-1].attempt))

    with dagster_dev(ws, "ui_browser") as dev, chromium_session() as browser:
        try:
            _look_at_the_ui(dev, browser, batch, n_attempts, last_key)
        except BaseException:
            browser.screenshot("failure.png")  # what the page showed when it failed
            raise


def _look_at_the_ui(
    dev: Any, browser: WebDriver, batch: str, n_attempts: int, last_key: str
) -> None:
    # (1) the asset graph: groups first (collapsed), then every group expanded
    browser.get(f"{dev.url}/asset-groups")
    text = browser.wait_for_text("Global asset lineage", "feature_selection", "training")
    for group in ("data", "leakage", "target_ranking", "feature_selection", "training"):
        assert group in text
    _expand_all_groups(browser)
    browser.wait_for_text("universe_bars", "feature_panel", "feature_exclusions", "featureset")
    time.sleep(3)  # cosmetic: let the nodes' materialization colours arrive before the picture
    browser.screenshot("01_asset_graph.png")

    # (2) the partitions of a partitioned asset: both dimensions' keys, all materialized
    browser.get(f"{dev.url}/assets/fwd_ret_5/oof_dataset?view=partitions")
    browser.wait_for_text(batch, f"Materialized ({n_attempts})", "Missing (0)", "Failed (0)")
    browser.click_xpath(f"//*[text()='{batch}']")
    browser.wait_for_text(last_key, "Latest materialization", "oof_predictions.parquet")
    browser.screenshot("02_oof_dataset_partitions.png")

    # (3) the importance plot: the markdown image of the latest materialization, shown
    partition, stored = _stored_plot(dev, ["fwd_ret_5", "feature_importances"], "importance_plot")
    assert partition == last_key
    browser.get(f"{dev.url}/assets/fwd_ret_5/feature_importances?view=events")
    browser.wait_for_text("importance_plot", "top_features", f"Partition {last_key} materialized")
    assert browser.script(INLINE_PNGS) == []  # markdown is folded until asked for
    browser.click_xpath(
        "//tr[.//*[normalize-space(text())='importance_plot']]"
        "//*[normalize-space(text())='[Show Markdown]']"
    )
    images = _wait_for_images(browser)
    browser.screenshot("03_feature_importances_plot.png")
    assert len(images) == 1, [i["src"][:60] for i in images]
    image = images[0]
    assert "importance_plot" in image["dialog"]
    assert image["src"] == stored  # the very PNG the asset wrote into its metadata
    assert image["naturalWidth"] > 400 and image["naturalHeight"] > 150, image
    assert image["width"] > 400 and image["height"] > 100, image  # laid out, visible


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
