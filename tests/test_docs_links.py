"""The front page and the manual point at files that exist: every relative link and picture in
README.md, docs/*.md, bench/*.md and data/**/README.md names a file or folder of the
repository (the part before any ``#anchor``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PAGES = sorted(
    [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("bench/*.md")]
    + list(ROOT.glob("data/**/README.md"))
)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's links and pictures that are paths in the repository."""
    targets = [m.group(1) for m in LINK.finditer(page.read_text())]
    return [t for t in targets if not re.match(r"^[a-z]+:|^#", t)]


def test_the_pages_hold_links():
    assert relative_links(ROOT / "README.md"), "the link pattern finds nothing in README.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_of_the_repository(page):
    missing = [
        t for t in relative_links(page) if not (page.parent / t.split("#", 1)[0]).resolve().exists()
    ]
    assert missing == [], f"{page.relative_to(ROOT)} links to missing files: {missing}"
