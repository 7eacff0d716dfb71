"""The evaluation (insights) page and the cluster map in system Chromium, driven by real clicks.

Both pages are written by the CLI from the shared prepared system. Playwright
drives the Debian `chromium` (executable_path; no browser is downloaded).
Without Chromium the tests skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.cli.conftest import INSTANCE, System, ok

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is required in CI (apt-get install -y chromium)")
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    opened.close()
    assert not errors, errors  # no script error on the page


def numbers(texts: list[str]) -> list[float]:
    return [float(t.replace("−", "-").replace(",", "")) for t in texts if t.strip()]


def test_insights_page_charts_have_numeric_axes(system: System, page: Page, tmp_path: Path) -> None:
    ok(system.cli("evaluation", INSTANCE, "--out", str(tmp_path)))
    report = next(tmp_path.glob(f"{INSTANCE}-v*/report.html"))
    page.goto(report.as_uri())
    charts = page.locator("figure[data-chart] svg")
    assert charts.count() == 5  # gains, calibration, histogram, factors, model health
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
    histogram = page.locator("figure[data-chart=score_histogram]")
    y_ticks = numbers(histogram.locator("g[id^=ytick] text").all_text_contents())
    x_ticks = numbers(histogram.locator("g[id^=xtick] text").all_text_contents())
    # Counts on a numeric axis: ascending numbers from 0, not one category per value.
    assert len(y_ticks) >= 3 and y_ticks == sorted(y_ticks) and y_ticks[0] == 0
    assert x_ticks == sorted(x_ticks) and x_ticks[0] >= 0 and x_ticks[-1] <= 100


def test_insights_page_model_health_chart_has_numeric_axes(
    system: System, page: Page, tmp_path: Path
) -> None:
    """Realized vs validation AUC and score PSI over the runs' as-of dates (README: two runs)."""
    ok(system.cli("evaluation", INSTANCE, "--out", str(tmp_path)))
    page.goto(next(tmp_path.glob(f"{INSTANCE}-v*/report.html")).as_uri())
    assert page.locator("#model-health").is_visible()
    figure = page.locator("figure[data-chart=model_health]")
    box = figure.locator("svg").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    for axes, low, high in (("axes_1", 0.0, 1.0), ("axes_2", 0.0, None)):
        ax = figure.locator(f"g[id={axes}]")
        y_ticks = numbers(ax.locator("g[id^=ytick] text").all_text_contents())
        # AUC and PSI on numeric axes: at least three ascending ticks within range.
        assert len(y_ticks) >= 3 and y_ticks == sorted(y_ticks) and y_ticks[0] >= low
        assert high is None or y_ticks[-1] <= high
        days = [date.fromisoformat(t) for t in ax.locator("g[id^=xtick] text").all_text_contents()]
        # A time axis (dates in order), not one category per run.
        assert len(days) >= 2 and days == sorted(days)
        assert days[0] <= date(2024, 11, 15) and days[-1] >= date(2024, 12, 15)
    # The per-run table lists both README runs, the earlier with its realized AUC.
    rows = page.locator("#model-health ~ table tbody tr")
    assert rows.count() >= 2 and any("2024-11-15" in t for t in rows.all_inner_texts())


def test_cluster_map_every_cluster_selectable_and_filters_points(
    system: System, page: Page, tmp_path: Path
) -> None:
    ok(system.cli("cluster-map", "--out", str(tmp_path), "--sample-size", "800"))
    clusters = json.loads(ok(system.cli("clusters", "--json")).stdout)["clusters"]
    page.goto((tmp_path / "cluster-map.html").as_uri())
    heading = page.locator("header h1").inner_text()
    assert "principal components" in heading and "x and y" in heading  # the axes are named
    data = json.loads(page.locator("#map-data").inner_text())
    per_cluster = Counter(data["c"])
    status = page.locator("#status")
    boxes = page.locator("input.pick")
    assert boxes.count() == len(clusters)
    # Every cluster is on the map (stratified sample) and can be selected by a click.
    assert set(per_cluster) == {c["cluster_id"] for c in clusters}
    assert status.get_attribute("data-highlighted") == str(len(data["c"]))
    for cluster in clusters:
        cid = cluster["cluster_id"]
        page.click("#none")
        page.click(f"label:has(#pick-{cid})")
        assert page.is_checked(f"#pick-{cid}")
        assert status.get_attribute("data-selected") == str(cid)
        assert status.get_attribute("data-highlighted") == str(per_cluster[cid])
        card = page.locator(f"#card-{cid}")
        assert card.is_visible() and cluster["name"] in card.inner_text()
    page.click("#view-popularity")
    assert page.locator("#details-body table").first.get_attribute("data-view") == "popularity"
    assert page.url.endswith(f"clusters={clusters[-1]['cluster_id']}&view=popularity")
    page.click("#all")
    assert status.get_attribute("data-highlighted") == str(len(data["c"]))
