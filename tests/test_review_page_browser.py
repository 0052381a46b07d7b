"""report.html in a real browser (headless Chromium): no errors, right cards, working filters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from segqc.assess import assess_images
from segqc.cli.predict import predict
from segqc.data.synthetic import make_synthetic
from segqc.integrity import seal
from tests.test_bundle import train_tiny_bundle

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    """report.html of `segqc predict` on 8 images, with a threshold that refers about half of them."""
    root = tmp_path_factory.mktemp("review")
    bundle = train_tiny_bundle(root / "model")
    images, _, _ = make_synthetic(6, 48, seed=21)
    images = [*images, np.zeros((30, 50, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8)]
    (root / "in").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / "in" / f"case_{i}.png")
    (root / "in" / "broken.jpg").write_text("not an image")
    # The tiny model predicts nearly the same quality everywhere: put the threshold in the middle.
    q = sorted(a.predicted_jaccard for a in assess_images(bundle, images))
    config = json.loads((root / "model" / "bundle.json").read_text())
    config["threshold"] = (q[3] + q[4]) / 2
    (root / "model" / "bundle.json").write_text(json.dumps(seal(config)))  # a deliberate change
    args = ["--model", str(root / "model"), "--out", str(root / "out"), "--quiet", str(root / "in")]
    result = CliRunner().invoke(predict, args)
    assert result.exit_code == 3, result.output
    with open(root / "out" / "quality.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return root / "out" / "report.html", rows


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_report_in_browser(report, browser, tmp_path):
    path, rows = report
    referred = {r["id"] for r in rows if r["decision"] == "refer"}
    passed = {r["id"] for r in rows if r["decision"] == "pass"}
    assert referred and passed and len(rows) == 8

    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")

    cards = page.locator("article.case")
    assert cards.count() == len(rows)
    counts = {
        k: page.locator(f'[data-count="{k}"]').inner_text() for k in ("total", "referred", "passed", "errors")
    }
    assert counts == {"total": "8", "referred": str(len(referred)), "passed": str(len(passed)), "errors": "1"}
    # Referrals first, each group worst predicted quality first.
    shown = [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]
    by_id = {r["id"]: r for r in rows}
    assert set(shown[: len(referred)]) == referred
    keys = [(by_id[i]["decision"] != "refer", float(by_id[i]["predicted_jaccard"])) for i in shown]
    assert keys == sorted(keys)
    # Each card says why: the reason column of quality.csv, shown next to the decision.
    reasons = {cards.nth(i).get_attribute("data-id"): cards.nth(i).locator(".reason").inner_text()
               for i in range(cards.count())}  # fmt: skip
    assert reasons == {r["id"]: r["reason"] for r in rows}
    assert all(reasons[k].startswith("out-of-distribution") for k in ("case_6", "case_7"))  # black, white
    # Every card shows three thumbnails that the browser decoded.
    widths = page.eval_on_selector_all("article.case img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 3 * len(rows) and all(0 < w <= 256 for w in widths)

    def visible() -> set[str]:
        return {
            cards.nth(i).get_attribute("data-id") for i in range(cards.count()) if cards.nth(i).is_visible()
        }

    assert visible() == referred | passed
    page.click('button[data-filter="refer"]')
    assert visible() == referred
    page.click('button[data-filter="pass"]')
    assert visible() == passed
    page.click('button[data-filter="all"]')
    assert visible() == referred | passed
    assert page.get_attribute('button[data-filter="all"]', "aria-pressed") == "true"

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    page.close()
