"""A real browser for the tests of what people look at: Debian's Chromium, headless, driven by
Selenium through Debian's chromedriver, with every host name unresolvable (a page that needs the
network shows it). Without Chromium the tests that need it skip, unless BMTARD_BROWSER=required
(.ci/run sets it, after installing the packages), where they fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def need_browser() -> None:
    """Skip (or fail, where BMTARD_BROWSER=required) without Chromium and its driver."""
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    if shutil.which("chromium") is None and CHROMIUM not in missing:
        missing.append("chromium on PATH")
    if not missing:
        return
    why = f"no {', '.join(missing)}: apt-get install chromium chromium-driver"
    if os.environ.get("BMTARD_BROWSER") == "required":
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def offline_chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium (a Selenium driver) that can resolve no host name."""
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: a CDN script fails to load
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], object], timeout: float = 20.0, what: str = "the page"):
    """``check()``'s first true value within ``timeout`` seconds (the page renders as its
    scripts run), else a failed test naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"{what} did not render within {timeout:.0f} s")
        time.sleep(0.25)


def network_requests(driver) -> list[str]:
    """Every resource the page asked for over the network (none offline)."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [n for n in names if n.startswith(("http:", "https:"))]


def image_shown(driver, element) -> bool:
    """Whether an <img> has loaded a picture of some size."""
    return bool(
        driver.execute_script(
            "const i = arguments[0]; return i.complete && i.naturalWidth > 100;", element
        )
    )
