"""The documentation as a map: a short README that links to the reference pages in `docs/` and the tools'
manuals beside their code, every relative link and anchor leading somewhere, and no history in any page."""

from __future__ import annotations

import re

import pytest

from .helpers import ROOT, documentation

LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _relative_links() -> list[tuple[str, str]]:
    return [
        (page, target)
        for page, text in documentation().items()
        for match in LINK.finditer(text)
        if not re.match(r"[a-z]+:", target := match[1] or match[2])
    ]


def test_the_readme_is_a_map_that_links_every_reference_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    linked = {target.split("#")[0] for page, target in _relative_links() if page == "README.md"}
    assert set(documentation()) - {"README.md"} <= linked


@pytest.mark.parametrize(("page", "target"), _relative_links())
def test_every_relative_link_of_the_documentation_leads_to_a_file_and_heading(page: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    assert file.resolve().is_file(), f"{page}: {target}"
    if anchor:
        assert anchor in _anchors(file.read_text()), f"{page}: {target}"


def test_the_documentation_tells_what_holds_now_without_history() -> None:
    history = re.compile(r"\bissue \d+|this round|earlier rounds?|of earlier versions|design \d", re.IGNORECASE)
    found = [(page, m[0]) for page, text in documentation().items() for m in history.finditer(text)]
    assert found == []
