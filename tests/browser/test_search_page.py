"""The search page at / in a real browser (Debian's Chromium through Playwright), against the
sample knowledge base indexed with the fake embedder. What the page shows is checked against
the API (GET /search, GET /boot/{slug}) and the database.

The DOM contract the page keeps: #q, #mode, #filter-tag, #filter-folder, #filter-kind,
#filter-archived; #results with li.hit[data-id][aria-selected] (.hit-title, .hit-path,
.hit-tags, .hit-kind, .hit-updated, .hit-snippet); #results-state[data-state]; #doc,
#doc-title, #doc-body, .passage-hit, #doc-status, #doc-error, #retry, #doc-close;
#status-strip [data-stat]; #boot-agent, #boot-items li.boot-item .boot-item-title,
#boot-tokens; the state in the URL; window.hqLastInputAt and window.hqLastRender.

`pytest -s tests/browser -k latency` prints the search page's latency (typing to painted
results); HQ_SCREENSHOTS=1 rewrites the screenshots in docs/.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest's `browser` says the same for each test
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

from embeddings.model import FakeEmbedder
from knowledge.ingest.worker import Worker
from knowledge.store.keys import create_key

from ..mcp_clients import http_service
from .conftest import FAILED_ERROR, Site

ROOT = Path(__file__).resolve().parents[2]
DELETION_QUERY = "customer wants their data deleted"
DELETION_TITLE = "Handling a data deletion request"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'

Page = Any


# --- helpers -----------------------------------------------------------------------------


def open_page(page: Page, site: Site, **params: str) -> None:
    response = page.goto(site.page_url(**params))
    assert response is not None and response.status == 200, f"GET / answered {response and response.status}"
    page.wait_for_selector("#q", state="visible")


def last_render_at(page: Page) -> float:
    return float(page.evaluate("window.hqLastRender ? window.hqLastRender.at : -1"))


def wait_render(page: Page, query: str, after: float = -1) -> dict[str, Any]:
    """Wait for window.hqLastRender to be the rendering of `query` painted after `after`."""
    page.wait_for_function(
        "([q, after]) => window.hqLastRender && window.hqLastRender.query === q && window.hqLastRender.at > after",
        arg=[query, after],
    )
    render: dict[str, Any] = page.evaluate("window.hqLastRender")
    return render


def search(page: Page, query: str) -> list[str]:
    """Type `query` into the box (as one input event) and return the ids of the hits shown."""
    before = last_render_at(page)
    page.fill("#q", query)
    render = wait_render(page, query, before)
    ids = hit_ids(page)
    assert render["count"] == len(ids), f"hqLastRender.count {render['count']} but {len(ids)} li.hit shown"
    return ids


def hit_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all("#results li.hit", "els => els.map(e => e.dataset.id)")
    return ids


def change_filter(page: Page, selector: str, value: str) -> list[str]:
    """Choose `value` in a filter select and return the hits shown once the page rendered again."""
    before = last_render_at(page)
    query = page.input_value("#q")
    page.select_option(selector, value)
    wait_render(page, query, before)
    return hit_ids(page)


def url_params(page: Page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def api_ids(site: Site, query: str, **params: Any) -> list[str]:
    return [h["id"] for h in site.search(query, **params)]


def last_search_request(page: Page) -> dict[str, list[str]]:
    """The query parameters of the page's latest GET /search (from Resource Timing)."""
    url = page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => new URL(n).pathname === '/search').pop() || ''"
    )
    assert url, "the page made no GET /search"
    return parse_qs(urlparse(url).query)


def replayed_ids(site: Site, page: Page) -> list[str]:
    """What GET /search answers to the page's latest request: what the page should show.
    (The same query with another `limit` may rank differently: each leg is cut at the limit.)"""
    params = last_search_request(page)
    query = params.pop("q")[0]
    return api_ids(site, query, **params)


def doc_status(site: Site, doc_id: str) -> dict[str, Any]:
    with site.db() as conn:
        row = conn.execute(
            "SELECT embedding_status, embedding_error, embedding_attempts FROM documents WHERE id = %s", [doc_id]
        ).fetchone()
    assert row is not None
    return row


# --- the tests -----------------------------------------------------------------------------


def test_typing_a_query_shows_the_best_document_first(site: Site, page: Page) -> None:
    expected = api_ids(site, DELETION_QUERY)
    assert expected[0] == site.doc_ids[DELETION_TITLE], "the API's first hit changed: pick another query"
    open_page(page, site)
    expect(page.locator("#results-state")).to_have_attribute("data-state", "idle")
    shown = search(page, DELETION_QUERY)
    assert shown, "no hits shown"
    assert shown[0] == expected[0]
    assert shown == replayed_ids(site, page), "the page's order differs from GET /search's"
    expect(page.locator("#results-state")).to_have_attribute("data-state", "results")
    first = page.locator("#results li.hit").first
    expect(first.locator(".hit-title")).to_have_text(DELETION_TITLE)
    expect(first.locator(".hit-path")).to_contain_text("Support")
    expect(first.locator(".hit-tags")).to_contain_text("privacy")
    expect(first.locator(".hit-kind")).to_contain_text("document", ignore_case=True)
    expect(first.locator(".hit-updated")).not_to_be_empty()
    # The server's snippet, with the matched terms marked.
    assert first.locator(".hit-snippet mark").count() > 0, first.locator(".hit-snippet").inner_html()
    params = url_params(page)
    assert params.get("q") == DELETION_QUERY, page.url


def test_an_empty_result_says_so(site: Site, page: Page) -> None:
    query = "zyxwvut qqqqq"
    assert api_ids(site, query, mode="keyword") == []
    open_page(page, site, mode="keyword")
    assert search(page, query) == []
    expect(page.locator("#results-state")).to_have_attribute("data-state", "empty")
    expect(page.locator("#results-state")).not_to_be_empty()


def test_a_query_too_long_and_a_service_down_are_said_plainly(site: Site, page: Page) -> None:
    open_page(page, site)
    page.fill("#q", "refund " * 150)  # 1,050 characters: the API takes at most 1,000
    state = page.locator("#results-state")
    expect(state).to_have_attribute("data-state", "error")
    expect(state).to_contain_text("at most 1000 characters")
    expect(page.locator("li.hit")).to_have_count(0)
    page.route("**/search?*", lambda route: route.abort())  # the service unreachable from here on
    page.fill("#q", "refund policy")
    expect(state).to_have_attribute("data-state", "error")
    expect(state).to_contain_text("Cannot reach the service")


def test_a_service_that_needs_keys_asks_for_one(site: Site, page: Page) -> None:
    with site.db() as conn:
        secret = create_key(conn, scope="read", name="browser test").secret
    with http_service(site.db_url, require_keys=True) as base:
        keyed = Site(base=base, db_url=site.db_url, doc_ids=site.doc_ids)
        open_page(page, keyed)
        form = page.locator("#key-form")
        expect(form).to_be_visible()
        expect(page.locator("#key-state")).to_contain_text("needs an API key")
        page.fill("#api-key", "hqk_not-a-key")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#key-state")).to_contain_text("The key was refused")
        page.fill("#api-key", secret)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#q", state="visible")
        expect(form).to_be_hidden()
        shown = search(page, DELETION_QUERY)
        assert shown and shown[0] == site.doc_ids[DELETION_TITLE]
        with httpx.Client(base_url=base) as http:
            assert http.get("/search", params={"q": DELETION_QUERY}).status_code == 401  # the page's key only


def test_filters_narrow_the_results(site: Site, page: Page) -> None:
    query = "pricing discount"
    open_page(page, site)
    everything = search(page, query)
    assert everything == replayed_ids(site, page)

    assets = change_filter(page, "#filter-kind", "asset")
    assert assets, "kind=asset shows nothing"
    assert len(assets) < len(everything)
    assert sorted(assets) == sorted(site.asset_ids.values())
    assert last_search_request(page).get("kind") == ["asset"]
    assert assets == replayed_ids(site, page)
    for kind in page.locator("#results li.hit .hit-kind").all_inner_texts():
        assert "asset" in kind.lower(), kind
    assert url_params(page).get("kind") == "asset", page.url

    change_filter(page, "#filter-kind", "")
    tagged = change_filter(page, "#filter-tag", "policy")
    assert tagged and len(tagged) < len(everything)
    request = last_search_request(page)
    assert "kind" not in request and ["policy"] in (request.get("tags_any"), request.get("tags_all")), request
    assert tagged == replayed_ids(site, page)
    tags = page.locator("#results li.hit .hit-tags").all_inner_texts()
    assert len(tags) == len(tagged) and all("policy" in t for t in tags), tags
    assert url_params(page).get("tag") == "policy", page.url


def plain(text: str) -> str:
    """Text without markdown's markers and with its white space collapsed, for comparisons."""
    return re.sub(r"[\s*_`#>|-]+", " ", text).strip().lower()


def test_the_keyboard_opens_a_hit_at_its_passage(site: Site, page: Page) -> None:
    query = "do not delete billing records"  # its best passage is the document's last section
    best = site.search(query, limit=20)[0]
    assert best["id"] == site.doc_ids[DELETION_TITLE] and best["passages"][0]["heading_path"][-1] == "What not to do"
    open_page(page, site)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.locator("body").press("/")
    assert page.evaluate("document.activeElement && document.activeElement.id") == "q"
    assert page.input_value("#q") == "", "the / that focuses the box was typed into it"

    before = last_render_at(page)
    page.keyboard.type(query)
    wait_render(page, query, before)
    hits = page.locator("#results li.hit")
    first_id = hits.first.get_attribute("data-id")
    first_title = hits.first.locator(".hit-title").inner_text()
    assert first_id == best["id"]
    expect(hits.first).to_have_attribute("aria-selected", "false")

    page.keyboard.press("ArrowDown")
    expect(hits.first).to_have_attribute("aria-selected", "true")
    assert page.locator('#results li.hit[aria-selected="true"]').count() == 1

    page.keyboard.press("Enter")
    expect(page.locator("#doc")).to_be_visible()
    expect(page.locator("#doc-title")).to_have_text(first_title)
    expect(page.locator("#doc-body")).not_to_be_empty()
    passage = page.locator("#doc-body .passage-hit")
    expect(passage).to_have_count(1)
    expect(passage).to_be_in_viewport()
    # The matched block: part of the hit's best passage, far enough down the document that
    # it is in view only because the page scrolled to it.
    assert plain(passage.inner_text())[:60] in plain(best["passages"][0]["content"]), passage.inner_text()
    below = page.evaluate("""() => document.querySelector('#doc-body .passage-hit').getBoundingClientRect().top
                                  - document.querySelector('#doc-body').getBoundingClientRect().top""")
    assert below > page.viewport_size["height"], f"the passage is only {below}px down the document"
    assert url_params(page).get("doc") == first_id, page.url
    expect(page.locator("#doc-status")).to_contain_text("indexed")
    expect(page.locator("#retry")).to_be_hidden()

    page.click("#doc-close")
    expect(page.locator("#doc")).to_be_hidden()
    assert "doc" not in url_params(page), page.url


def test_a_failed_document_can_be_retried(site: Site, page: Page) -> None:
    assert doc_status(site, site.failed_id)["embedding_status"] == "failed"
    open_page(page, site, doc=site.failed_id)
    expect(page.locator("#doc")).to_be_visible()
    expect(page.locator("#doc-status")).to_contain_text("failed")
    expect(page.locator("#doc-error")).to_contain_text(FAILED_ERROR)
    expect(page.locator("#retry")).to_be_visible()

    page.click("#retry")
    expect(page.locator("#doc-status")).to_contain_text("pending")
    expect(page.locator("#retry")).to_be_hidden()
    row = doc_status(site, site.failed_id)
    assert row["embedding_status"] == "pending", row  # no worker runs next to this API
    assert row["embedding_attempts"] == 0, row


def test_the_boot_preview_is_the_agents_bundle(site: Site, page: Page) -> None:
    with site.db() as conn:
        slugs = [r["slug"] for r in conn.execute("SELECT slug FROM agents ORDER BY slug")]
    open_page(page, site)
    options = page.eval_on_selector_all("#boot-agent option", "os => os.map(o => o.value)")
    assert options[0] == "" and sorted(options[1:]) == slugs, options

    for slug in ("closer", "helpdesk"):
        bundle = site.get(f"/boot/{slug}")
        titles = [item["title"] for item in bundle["items"]]
        assert titles
        page.select_option("#boot-agent", slug)
        expect(page.locator("#boot-items li.boot-item .boot-item-title")).to_have_text(titles)
        tokens = page.locator("#boot-tokens")
        expect(tokens).to_contain_text(re.compile(r"\d"))
        shown = re.search(r"\d[\d,.\u202f\u00a0 ]*", tokens.inner_text())
        assert shown and re.sub(r"\D", "", shown.group()) == str(bundle["tokens"]), (
            f"#boot-tokens {tokens.inner_text()!r}, the bundle has {bundle['tokens']}"
        )


def test_a_result_url_shows_the_same_hits_after_a_reload(site: Site, page: Page) -> None:
    query = "refund annual plan"
    open_page(page, site, q=query, mode="keyword")
    wait_render(page, query)
    first = hit_ids(page)
    assert first, "a result URL shows no hits"
    assert last_search_request(page).get("mode") == ["keyword"]
    assert first == replayed_ids(site, page)
    assert page.input_value("#q") == query
    assert page.input_value("#mode") == "keyword"

    page.reload()
    wait_render(page, query)
    assert hit_ids(page) == first
    assert page.input_value("#mode") == "keyword"
    params = url_params(page)
    assert params.get("q") == query and params.get("mode") == "keyword", page.url


def test_html_in_titles_bodies_and_queries_is_shown_as_text(site: Site, page: Page) -> None:
    word = "zanzibarquokka"
    title = f"Payload {XSS} {word}"
    body = f"# Payload {word}\n\n{XSS}\n\nThe {word} paragraph: {XSS} end."
    with site.api() as http:
        created = http.post("/documents", json={"title": title, "content_format": "markdown", "content_text": body})
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
    try:
        Worker(site.db_url, FakeEmbedder()).run(once=True)
        assert doc_status(site, doc_id)["embedding_status"] == "indexed"
        assert api_ids(site, word, mode="keyword")[:1] == [doc_id]

        open_page(page, site, mode="keyword")
        assert search(page, word)[:1] == [doc_id]
        hit = page.locator("#results li.hit").first
        expect(hit.locator(".hit-title")).to_contain_text("<script>")
        expect(hit.locator(".hit-title")).to_contain_text("<img src=x")

        hit.locator(".hit-title").click()
        expect(page.locator("#doc")).to_be_visible()
        expect(page.locator("#doc-title")).to_contain_text("<script>window.__xss=2</script>")
        expect(page.locator("#doc-body")).to_contain_text(word)
        page.wait_for_timeout(300)  # an injected <img src=x> would have fired its onerror by now
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator('img[src="x"], img[onerror]').count() == 0
        assert page.evaluate("[...document.scripts].filter(s => s.text.includes('__xss')).length") == 0

        bold = "<b>bold</b>"
        before = last_render_at(page)
        page.fill("#q", bold)
        wait_render(page, bold, before)
        assert page.input_value("#q") == bold
        assert page.evaluate("[...document.querySelectorAll('b')].filter(b => b.textContent === 'bold').length") == 0
        state = page.locator("#results-state").inner_text()
        if "bold" in state:  # the message repeats the query: as typed
            assert bold in state, state
        assert page.evaluate("typeof window.__xss") == "undefined"
    finally:
        with site.api() as http:
            http.delete(f"/documents/{doc_id}")


def test_the_status_strip(site: Site, page: Page) -> None:
    open_page(page, site)
    strip = page.locator("#status-strip")
    for stat in ("documents", "passages", "queue", "model", "keyword"):
        expect(strip.locator(f'[data-stat="{stat}"]')).not_to_be_empty()
    status = site.get("/status")
    expect(strip.locator('[data-stat="model"]')).to_contain_text(status["active_model"])
    expect(strip.locator('[data-stat="keyword"]')).to_contain_text(status["keyword_path"])
    for stat in ("documents", "passages"):
        number = re.compile(rf"(?<![\d,.]){status[stat]:,}(?![\d,.])|(?<!\d){status[stat]}(?!\d)")
        expect(strip.locator(f'[data-stat="{stat}"]')).to_contain_text(number)


LATENCY_QUERIES = [
    "refund annual plans",
    "data deletion request",
    "discount approval limit",
    "incident response runbook",
    "release checklist steps",
    "security questionnaire answers",
    "outage status page",
    "invoice dunning emails",
    "monthly close checklist",
    "code review guidelines",
    "competitor pricing snapshot",
    "customer interview notes",
    "business hours holidays",
    "tone of voice",
    "escalation policy approvals",
    "severity response times",
    "ticket triage rules",
    "database migration checklist",
    "lead qualification questions",
    "market sizing logistics",
]


@pytest.mark.slow
def test_typing_to_results_latency(site: Site, page: Page) -> None:
    """Not asserted: how long from the last keystroke to painted results, over 20 typed queries."""
    assert len(LATENCY_QUERIES) == 20 and all(len(q.split()) == 3 for q in LATENCY_QUERIES)
    open_page(page, site)
    search(page, "warm up the page")
    samples: list[float] = []
    for query in LATENCY_QUERIES:
        page.fill("#q", "")
        page.wait_for_timeout(50)
        before = last_render_at(page)
        page.click("#q")
        page.keyboard.type(query, delay=20)
        render = wait_render(page, query, before)
        samples.append(round(render["at"] - page.evaluate("window.hqLastInputAt"), 1))
    median = round(statistics.median(samples), 1)
    print(f"\nsearch page latency, last keystroke to painted results: median {median} ms; samples {samples}")
    assert all(s >= 0 for s in samples), samples
    if os.environ.get("HQ_WRITE_RESULTS") == "1":  # kept out of CI runs: they would rewrite a tracked file
        out = ROOT / "benchmarks" / "results" / "search_page_latency.json"
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        out.write_text(json.dumps({"machine": machine, "samples_ms": samples, "median_ms": median}, indent=2) + "\n")


@pytest.mark.screenshots
@pytest.mark.skipif(os.environ.get("HQ_SCREENSHOTS") != "1", reason="rewrites docs/*.png: set HQ_SCREENSHOTS=1")
def test_screenshots(site: Site, page: Page, browser: Any) -> None:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    open_page(page, site)
    search(page, DELETION_QUERY)
    page.wait_for_timeout(200)
    page.screenshot(path=str(docs / "search-results.png"))

    page.locator("#results li.hit").first.locator(".hit-title").click()
    expect(page.locator("#doc .passage-hit").first).to_be_in_viewport()
    page.wait_for_timeout(300)  # let a smooth scroll settle
    page.screenshot(path=str(docs / "document-view.png"))

    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        small = context.new_page()
        open_page(small, site, q=DELETION_QUERY)
        wait_render(small, DELETION_QUERY)
        small.wait_for_timeout(200)
        small.screenshot(path=str(docs / "search-390.png"))
    finally:
        context.close()
    assert httpx.get(site.base + "/healthz").status_code == 200
