"""The cluster map page in headless Chromium: select clusters, switch views, check what shows.

The page keeps its selection in the URL hash, so opening it with
``#clusters=1&view=popularity`` drives the same code a click does; Chromium
runs the page's script and `--dump-dom` returns the DOM it produced.
Without Chromium the test skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from foresight.cluster_map import ClusterMap, MapPoint
from foresight.tools.mapview import write_html
from services.segmenter.discovery_types import ClusterInfo, Trait

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("headless Chromium is required in CI (apt-get install -y chromium)")
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


def trait(code: str, text: str, pct: float, pop: float, count: int) -> Trait:
    return Trait(code, text, pct, pop, round(pct / pop, 3), count)


CLUSTERS = [
    ClusterInfo(
        0,
        1,
        "Mostly mobile · Used the app",
        500,
        0.5,
        influence=[trait("channel:mobile", "Mostly mobile", 90, 30, 450)],
        popularity=[trait("event:commerce.productViews", "Viewed products", 95, 90, 475)],
    ),
    ClusterInfo(
        1,
        1,
        "Browsed appliances · High spender",
        300,
        0.3,
        influence=[trait("category:appliances", "Browsed appliances", 80, 20, 240)],
        popularity=[trait("purchase:any", "Purchased in the last year", 70, 40, 210)],
    ),
    ClusterInfo(
        2,
        1,
        "Clicked emails",
        200,
        0.2,
        influence=[trait("event:message.clicked", "Clicked emails", 60, 10, 120)],
        popularity=[trait("channel:email", "Mostly email", 55, 12, 110)],
    ),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    points = [MapPoint(f"p{i}", float(i % 17), float(i % 11), i % 3) for i in range(300)]
    return write_html(
        ClusterMap(1, points, CLUSTERS, "pca"), tmp_path_factory.mktemp("map") / "map.html"
    )


def render(page: Path, fragment: str) -> str:
    """The DOM after the page's script ran, opened at `page#fragment`."""
    browser = chromium()
    out = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=3000",
            f"--user-data-dir={page.parent / 'profile'}",
            "--dump-dom",
            f"{page.as_uri()}#{fragment}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


def cards(dom: str) -> dict[int, str]:
    """Cluster id → the HTML of its trait card, from the rendered details panel."""
    panel = dom.split('<div id="details-body">', 1)[1].split("</section>", 1)[0]
    out: dict[int, str] = {}
    for block in re.split(r'(?=<div class="card" id="card-)', panel)[1:]:
        m = re.match(r'<div class="card" id="card-(\d+)"', block)
        assert m is not None
        out[int(m.group(1))] = block.split("</table>")[0]
    return out


def status(dom: str) -> tuple[str, str]:
    m = re.search(r'<div id="status"[^>]*>', dom)
    assert m is not None
    tag = m.group(0)
    selected = re.search(r'data-selected="([^"]*)"', tag)
    view = re.search(r'data-view="([^"]*)"', tag)
    assert selected is not None and view is not None
    return selected.group(1), view.group(1)


def test_selecting_one_cluster_in_the_popularity_view(page: Path) -> None:
    dom = render(page, "clusters=1&view=popularity")
    assert status(dom) == ("1", "popularity")
    shown = cards(dom)
    assert list(shown) == [1]
    card = html.unescape(shown[1])
    assert "Browsed appliances · High spender" in card
    assert 'data-view="popularity"' in card
    assert "Purchased in the last year" in card and "210" in card  # popular trait and its count
    assert "Browsed appliances</td>" not in card  # the influence trait is not in this view
    assert "Popularity" in dom.split('id="details-title"')[1][:80]


def test_selecting_several_clusters_in_the_influence_view(page: Path) -> None:
    dom = render(page, "clusters=0,2&view=influence")
    assert status(dom) == ("0,2", "influence")
    shown = cards(dom)
    assert sorted(shown) == [0, 2]
    assert "Mostly mobile" in html.unescape(shown[0]) and "3.00×" in shown[0]  # lift 90/30
    assert "Clicked emails" in html.unescape(shown[2]) and "6.00×" in shown[2]
    assert "Browsed appliances" not in html.unescape("".join(shown.values()))


def test_nothing_selected_shows_the_hint(page: Path) -> None:
    dom = render(page, "")
    assert status(dom) == ("", "influence")
    assert cards(dom) == {}
    assert 'id="nothing"' in dom
    # Every cluster is offered in the selector.
    for c in CLUSTERS:
        assert f'id="pick-{c.cluster_id}"' in dom
