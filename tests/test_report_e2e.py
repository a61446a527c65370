"""The Snakemake report of a tiny grid (``snakemake --report report.html --report-after-run``),
opened in a real browser with no network (tests/browser.py): the comparison's table, the
trade-off and cost pictures, and each experiment's curves and model card render.

BMTARD_SCREENSHOTS=<folder> keeps screenshots of three views there (report-comparison.png,
report-experiment.png, report-card.png: docs/results.md shows them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from browser import image_shown, network_requests, offline_chromium, wait_for
from pipeline_helpers import BIN, copy_project, run, snakemake_ran

pytestmark = pytest.mark.slow

SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "2", "--resources", "gpu=1"]
GRID = {"distill.method": ["sat", "bmtard"], "run.seed": [0]}
NAMES = ["method-bmtard_seed-0", "method-sat_seed-0"]
# AutoAttack gives the trade-off picture its y; the masking checks are not what is shown here
SETTINGS = {"evaluate.attacks": ["fgsm", "autoattack"], "evaluate.sanity.enabled": False}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("report"), SETTINGS)
    (repo / "grid.yaml").write_text(yaml.safe_dump({"grid": GRID}))
    proc = run(
        repo, *SNAKEMAKE, "--configfile", "grid.yaml", "--report", "report.html",
        "--report-after-run",
    )  # fmt: skip
    ran = snakemake_ran(proc.stdout + proc.stderr, report=True)
    assert sorted(r for r in ran if r in ("compare", "curves_grid", "card_grid")) == [
        "card_grid", "card_grid", "compare", "curves_grid", "curves_grid",
    ]  # fmt: skip
    assert (repo / "report.html").stat().st_size > 100_000
    return repo


class Report:
    """The report in the browser: its home page, a category, a file's view."""

    def __init__(self, driver, path: Path, shots: Path | None) -> None:
        from selenium.webdriver.common.by import By

        self.d, self.by, self.uri, self.shots = driver, By, path.as_uri(), shots

    def home(self) -> None:
        self.d.get(self.uri)
        wait_for(lambda: self.d.find_elements(self.by.LINK_TEXT, "Comparison"), what="the report")

    def listed(self) -> list[str]:
        """The files the open (sub)category lists."""
        return [e.text for e in self.d.find_elements(self.by.CSS_SELECTOR, "td") if e.text]

    def category(self, name: str, sub: str | None = None) -> list[str]:
        """Open a category (and a subcategory of it): the files it lists."""
        self.home()
        self.d.find_element(self.by.LINK_TEXT, name).click()
        if sub is not None:
            xpath = f"//span[text()='{sub}']"
            wait_for(lambda: self.d.find_elements(self.by.XPATH, xpath), what=sub)
            self.d.find_element(self.by.XPATH, xpath).click()
        return wait_for(self.listed, what=f"{name} {sub or ''}")

    def view(self, file: str, shot: str | None = None):
        """Show a listed file (its eye button): the <img> (once its picture loaded) or the
        <iframe> that shows it."""
        row = self.d.find_element(self.by.XPATH, f"//td[text()='{file}']/..")
        row.find_element(self.by.CSS_SELECTOR, "a[iconname=eye]").click()
        tag = "img" if file.endswith(".png") else "iframe"

        def shown():
            for e in self.d.find_elements(self.by.TAG_NAME, tag):
                if f"filename={Path(file).name}" in (e.get_attribute("src") or ""):
                    return e if tag == "iframe" or image_shown(self.d, e) else None
            return None

        element = wait_for(shown, what=file)
        if self.shots is not None and shot is not None:
            self.d.save_screenshot(str(self.shots / f"report-{shot}.png"))
        return element

    def frame_text(self, frame) -> tuple[str, list[str]]:
        """An iframe's text and its table headers."""
        self.d.switch_to.frame(frame)
        try:
            heads = [h.text for h in self.d.find_elements(self.by.TAG_NAME, "th")]
            return self.d.find_element(self.by.TAG_NAME, "body").text, heads
        finally:
            self.d.switch_to.default_content()


def test_the_report_renders_the_comparison_and_each_experiment_offline(report):
    shots = Path(os.environ["BMTARD_SCREENSHOTS"]) if os.environ.get("BMTARD_SCREENSHOTS") else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    with offline_chromium() as driver:
        r = Report(driver, report / "report.html", shots)
        r.home()
        assert network_requests(driver) == []  # self-contained: it opens offline
        listed = r.category("Comparison")
        files = [f"comparison/{n}" for n in
                 ("comparison.html", "cost-cifar10.png", "tradeoff-cifar10.png")]  # fmt: skip
        assert sorted(listed) == files
        text, heads = r.frame_text(r.view("comparison/comparison.html", "comparison"))
        assert heads[:4] == ["Experiment", "Engine", "Method", "Teachers"]
        assert {"AA", "W-Robust", "Train min", "Peak GB", "Eval min", "Device"} <= set(heads)
        assert all(name in text for name in NAMES) and "Over seeds" in text
        for picture in files[1:]:
            r.view(picture)
        for name in NAMES:
            assert sorted(r.category("Experiments", name)) == [
                f"results/{name}/pages/card.html", f"results/{name}/pages/curves.png",
            ]  # fmt: skip
            shot = "experiment" if name.startswith("method-bmtard") else None
            r.view(f"results/{name}/pages/curves.png", shot)
            text, heads = r.frame_text(r.view(f"results/{name}/pages/card.html", shot and "card"))
            assert f"results/{name}/models/student.pt" in text and "What it cost" in text
            assert {"Stage", "Device", "Minutes", "Peak MB"} <= set(heads)
        assert network_requests(driver) == []
