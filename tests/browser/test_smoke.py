"""The harness itself: the API serves the page at / and Chromium loads it."""

from __future__ import annotations

from typing import Any

from .conftest import Site


def test_the_page_loads_and_has_the_search_box(site: Site, page: Any) -> None:
    response = page.goto(site.page_url())
    assert response is not None and response.status == 200, response and response.status
    page.wait_for_selector("#q", state="visible")
    assert page.evaluate("document.activeElement !== null")
