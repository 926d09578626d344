"""Boot bundles: what an agent gets (order, parts, rendering), the token budget, the two
representations, and the ETag that lets an agent skip an unchanged bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient

from knowledge.agents.operations import read_document
from knowledge.api import create_app
from knowledge.api.routes.boot import BootBundlePublic
from knowledge.errors import InvalidInput, NotFound
from knowledge.search.boot import (
    JSON,
    MARKDOWN,
    OVER_BUDGET,
    TRUNCATION_NOTE,
    boot_bundle,
    boot_version,
    bundle_markdown,
    default_token_counter,
)
from knowledge.store.assets import archive_asset, create_asset, update_asset
from knowledge.store.documents import archive_document, create_document, update_document
from knowledge.store.folders import create_folder, update_folder
from knowledge.store.tags import add_tag, remove_tag

from . import tiptap
from .apiclient import local_client

Conn = psycopg.Connection[dict[str, Any]]

TEN = "one two three four five six seven eight nine ten"
"""Ten words of one word piece each."""
TIPTAP = tiptap.doc(
    tiptap.heading(2, "Escalation"),
    tiptap.para(tiptap.text("Call the "), tiptap.text("on-call", "bold"), tiptap.text(" engineer.")),
    tiptap.bullets(tiptap.item(tiptap.para(tiptap.text("page them twice")))),
)


def agent(conn: Conn, slug: str) -> None:
    conn.execute("INSERT INTO agents (slug, name) VALUES (%s, %s)", [slug, slug.title()])


def doc(conn: Conn, title: str, *tags: str, text: str = "Body.", **fields: Any) -> UUID:
    return create_document(conn, title=title, content_text=text, tags=tags, **fields).id


def titles(bundle_json: dict[str, Any]) -> list[str]:
    return [item["title"] for item in bundle_json["items"]]


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with local_client(create_app(db_url)) as c:
        yield c


# ---- what is in a bundle, and in what order -----------------------------------------------------


def test_bundle_order_parts_pinned_folders_and_exclusions(conn: Conn, client: TestClient) -> None:
    agent(conn, "nova")
    agent(conn, "scout")
    ops = create_folder(conn, "document", name="Ops").id
    sub = create_folder(conn, "document", name="Sub", parent_id=ops).id
    team = create_folder(conn, "document", name="Ops Team").id
    doc(conn, "Team notes", "boot:all", folder_id=team)
    doc(conn, "zeta rules", "boot:all")
    doc(conn, "Sub notes", "boot:all", folder_id=sub)
    doc(conn, "Ops notes", "boot:all", folder_id=ops)
    doc(conn, "Alpha", "boot:all", "pricing")
    doc(conn, "Pinned late", "boot:all", pinned=True, folder_id=sub)
    doc(conn, "Both tags", "boot:nova", "boot:all")
    doc(conn, "Nova only", "boot:nova")
    doc(conn, "Nova pinned", "boot:nova", pinned=True)
    create_asset(conn, name="Nova asset", asset_type="sop", content_text="Step one.", tags=["boot:nova"])
    create_asset(conn, name="All asset", content_text="Shared.", tags=["boot:all"])
    doc(conn, "Scout only", "boot:scout")
    doc(conn, "Untagged")
    archive_document(conn, doc(conn, "Archived", "boot:all"))
    archive_asset(conn, create_asset(conn, name="Archived asset", content_text="x", tags=["boot:nova"]).id)

    body = client.get("/boot/nova").json()
    assert titles(body) == [
        # boot:all: pinned first, then documents by folder in tree order, then title; assets last
        "Pinned late",
        "Alpha",
        "Both tags",
        "zeta rules",
        "Ops notes",
        "Sub notes",
        "Team notes",
        "All asset",
        # boot:nova
        "Nova pinned",
        "Nova only",
        "Nova asset",
    ]
    assert [i["folder_path"] for i in body["items"][:7]] == ["/Ops/Sub", "/", "/", "/", "/Ops", "/Ops/Sub", "/Ops Team"]
    assert [i["kind"] for i in body["items"]][-4:] == ["asset", "document", "document", "asset"]
    assert body["omitted"] == [] and body["max_tokens"] is None
    assert body["tokens"] == sum(i["tokens"] for i in body["items"]) > 0
    BootBundlePublic.model_validate(body)
    scout = client.get("/boot/scout").json()
    assert "Scout only" in titles(scout) and not {"Nova only", "Nova asset"} & set(titles(scout))


def test_equal_folder_and_title_order_by_id(conn: Conn) -> None:
    agent(conn, "nova")
    ids = [doc(conn, "Same", "boot:all") for _ in range(4)]
    bundle = boot_bundle(conn, "nova")
    assert [i.id for i in bundle.items] == sorted(ids, key=str)
    assert boot_bundle(conn, "nova").items == bundle.items


def test_items_are_markdown_with_title_heading(conn: Conn, client: TestClient) -> None:
    agent(conn, "nova")
    create_document(conn, title="On-call runbook", content_format="tiptap", content=TIPTAP, tags=["boot:all"])
    doc(conn, "Html page", "boot:all", content_format="html", text="<h2>Prices</h2><p>Plan <b>Pro</b></p>")
    create_asset(
        conn,
        name="Refund SOP",
        asset_type="sop",
        description="How refunds go.",
        content_text="1. Check the order.",
        tags=["boot:nova"],
    )
    items = client.get("/boot/nova").json()["items"]
    page, runbook, sop = (i["markdown"] for i in items)  # by title within boot:all
    assert runbook == ("# On-call runbook\n\n## Escalation\n\nCall the **on-call** engineer.\n\n- page them twice")
    assert page == "# Html page\n\n## Prices\n\nPlan **Pro**"
    assert sop == "# Refund SOP\n\nType: SOP\n\nHow refunds go.\n\n1. Check the order."
    assert items[2]["kind"] == "asset"
    text = client.get("/boot/nova", headers={"Accept": MARKDOWN}).text
    for rendered in (runbook, text):
        assert "{" not in rendered and '"type"' not in rendered and "paragraph" not in rendered


@pytest.mark.parametrize(
    ("title", "body", "shown"),
    [
        # the document's own H1 says the title: shown once
        ("Company overview", "# Company overview\n\nWe sell plans.", "# Company overview\n\nWe sell plans."),
        ("Company overview", "Company Overview\n================\n\nWe sell.", "# Company overview\n\nWe sell."),
        (
            "Pricing *rules*",
            "#  **Pricing**   rules #\n\n## Tiers\n\nThree.",
            "# Pricing *rules*\n\n## Tiers\n\nThree.",
        ),
        # another H1, a deeper heading or text first: the document's headings stay
        ("Company overview", "# Who we are\n\nWe sell.", "# Company overview\n\n# Who we are\n\nWe sell."),
        (
            "Company overview",
            "## Company overview\n\nWe sell.",
            "# Company overview\n\n## Company overview\n\nWe sell.",
        ),
        ("Company overview", "Intro.\n\n# Company overview", "# Company overview\n\nIntro.\n\n# Company overview"),
        ("Notes", "# Notes", "# Notes"),
    ],
)
def test_a_leading_heading_that_repeats_the_title_is_shown_once(
    conn: Conn, client: TestClient, title: str, body: str, shown: str
) -> None:
    agent(conn, "nova")
    doc_id = doc(conn, title, "boot:all", text=body)
    assert [i["markdown"] for i in client.get("/boot/nova").json()["items"]] == [shown]
    assert bundle_markdown(boot_bundle(conn, "nova", media_type=MARKDOWN)).count(shown) == 1
    # get_document reads the same: the title once, the document's other headings kept
    assert read_document(conn, doc_id, count_tokens=len).markdown == shown


def test_unrenderable_item_is_listed_as_omitted(conn: Conn) -> None:
    agent(conn, "nova")
    doc(conn, "Fine", "boot:all")
    broken = conn.execute(
        "INSERT INTO documents (title, content_format, content, tags) VALUES ('Broken', 'tiptap', "
        "%s, '{boot:all}') RETURNING id",
        [json.dumps({"type": "doc", "content": [{"type": "paragraph", "content": [{"type": "text"}]}]})],
    ).fetchone()
    assert broken is not None
    bundle = boot_bundle(conn, "nova")
    assert [i.title for i in bundle.items] == ["Fine"]
    assert [(o.id, o.tokens) for o in bundle.omitted] == [(broken["id"], 0)]
    assert bundle.omitted[0].reason.startswith("cannot be rendered: content[0].content[0]")


def test_unknown_agent_404_and_bad_input_422(conn: Conn, client: TestClient) -> None:
    agent(conn, "nova")
    response = client.get("/boot/ghost")
    assert response.status_code == 404 and "'ghost'" in response.json()["detail"]
    for slug in ("Nova", "-nova", "nova_1", "n" * 64):
        response = client.get(f"/boot/{slug}")
        assert response.status_code == 422, slug
        assert repr(slug) in response.json()["detail"]
    for bad in ("0", "1000001", "ten"):
        assert client.get(f"/boot/nova?max_tokens={bad}").status_code == 422
    assert client.get("/boot/nova?max_tokens=1000000").status_code == 200
    with pytest.raises(NotFound, match="agent 'ghost' not found"):
        boot_version(conn, "ghost")
    with pytest.raises(InvalidInput, match="max_tokens"):
        boot_bundle(conn, "nova", max_tokens=0)


# ---- representations -------------------------------------------------------------------------------


def test_markdown_representation_by_accept(conn: Conn, client: TestClient) -> None:
    agent(conn, "nova")
    doc(conn, "First", "boot:all", text="First body.", pinned=True)
    doc(conn, "Second", "boot:nova", text="Second body.")
    response = client.get("/boot/nova", headers={"Accept": "text/markdown"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    version = response.headers["etag"].strip('"')
    assert response.text == (
        f"# Boot bundle: nova\n\nVersion {version}: 2 items, "
        f"{client.get('/boot/nova').json()['tokens']} tokens.\n\n"
        "# First\n\nFirst body.\n\n# Second\n\nSecond body.\n"
    )

    def served(accept: str | None) -> str:
        headers = {"Accept": accept} if accept is not None else {}
        return client.get("/boot/nova", headers=headers).headers["content-type"].split(";")[0]

    assert served(None) == JSON
    assert served("*/*") == JSON
    assert served("text/html") == JSON  # nothing acceptable: the default rather than 406
    assert served("text/*") == MARKDOWN
    assert served("text/markdown, */*;q=0.1") == MARKDOWN
    assert served("text/markdown;q=0.5, application/json") == JSON
    assert served("application/json;q=0, text/markdown;q=0.2") == MARKDOWN


# ---- the token budget --------------------------------------------------------------------------------


def _long_text() -> str:
    return f"## First\n\nAlpha {TEN}\n\nBeta {TEN}\n\n## Second\n\nGamma {TEN}\n\n- delta {TEN}\n- epsilon {TEN}"


def test_budget_cuts_at_paragraph_and_lists_the_rest(conn: Conn, client: TestClient) -> None:
    count = default_token_counter()
    agent(conn, "nova")
    doc(conn, "Intro", "boot:all", text=TEN, pinned=True)
    long_id = doc(conn, "Long", "boot:all", text=_long_text())
    tail_id = doc(conn, "Tail", "boot:nova", text=TEN)
    intro = f"# Intro\n\n{TEN}"
    assert count(intro) == 12  # 2 for the heading, 10 words
    kept = f"# Long\n\n## First\n\nAlpha {TEN}\n\nBeta {TEN}"
    assert count(kept) == 2 + 3 + 11 + 11
    cut = f"{kept}\n\n{TRUNCATION_NOTE}"
    # Room for the first section and the note, not for the heading and paragraph after it.
    budget = 12 + count(cut) + 5

    body = client.get(f"/boot/nova?max_tokens={budget}").json()
    assert titles(body) == ["Intro", "Long"]
    intro_item, long_item = body["items"]
    assert (intro_item["markdown"], intro_item["tokens"], intro_item["truncated"]) == (intro, 12, False)
    assert (long_item["markdown"], long_item["tokens"], long_item["truncated"]) == (cut, count(cut), True)
    assert body["tokens"] == 12 + count(cut) <= budget == body["max_tokens"]
    assert body["omitted"] == [
        {
            "id": str(tail_id),
            "kind": "document",
            "title": "Tail",
            "tokens": count(f"# Tail\n\n{TEN}"),
            "reason": OVER_BUDGET,
        }
    ]

    # Not even the first paragraph of Long and the note fit: Long is left out whole.
    small = client.get(f"/boot/nova?max_tokens={12 + 20}").json()
    assert titles(small) == ["Intro"]
    assert [(o["id"], o["tokens"]) for o in small["omitted"]] == [
        (str(long_id), count(f"# Long\n\n{_long_text()}")),
        (str(tail_id), 12),
    ]
    long_tokens = small["omitted"][0]["tokens"]
    text = client.get(f"/boot/nova?max_tokens={12 + 20}", headers={"Accept": MARKDOWN}).text
    assert text.endswith(
        f"# Left out\n\n- Long (document {long_id}, {long_tokens} tokens): over budget\n"
        f"- Tail (document {tail_id}, 12 tokens): over budget\n"
    )


def test_every_budget_keeps_whole_blocks_within_the_budget(conn: Conn) -> None:
    count = default_token_counter()
    agent(conn, "nova")
    doc(conn, "Intro", "boot:all", text=TEN, pinned=True)
    doc(conn, "Long", "boot:all", text=_long_text() + f"\n\n```\ncode {TEN}\n\nmore {TEN}\n```")
    create_asset(conn, name="Guide", content_text=f"Para {TEN}\n\nPara {TEN}", tags=["boot:nova"])
    full = boot_bundle(conn, "nova")
    whole = {i.id: i.markdown for i in full.items}
    order = [i.id for i in full.items]
    cuts = 0
    for budget in range(1, full.tokens + 2):
        bundle = boot_bundle(conn, "nova", max_tokens=budget)
        assert [i.id for i in bundle.items] + [o.id for o in bundle.omitted] == order
        assert bundle.tokens == sum(i.tokens for i in bundle.items) <= budget
        for item in bundle.items:
            assert item.tokens == count(item.markdown)
            if not item.truncated:
                assert item.markdown == whole[item.id]
                continue
            cuts += 1
            assert item is bundle.items[-1]
            kept = item.markdown.removesuffix(f"\n\n{TRUNCATION_NOTE}")
            assert kept != item.markdown and whole[item.id].startswith(kept)
            rest = whole[item.id][len(kept) :]
            assert rest.startswith("\n\n"), f"cut inside a block at budget {budget}: {rest[:30]!r}"
            assert "```" not in kept or kept.count("```") % 2 == 0
            assert kept.strip() != kept.split("\n")[0]  # more than the title
    assert cuts > 5
    assert bundle.omitted == [] and not any(i.truncated for i in bundle.items)


# ---- ETag and 304 ----------------------------------------------------------------------------------


def test_etag_304_until_a_change(conn: Conn, client: TestClient) -> None:
    agent(conn, "nova")
    agent(conn, "scout")
    first = doc(conn, "First", "boot:all")
    second = doc(conn, "Second", "boot:nova")
    asset = create_asset(conn, name="Sheet", content_text="a,b", tags=["boot:nova"]).id
    unrelated = doc(conn, "Unrelated", "pricing")
    folder = create_folder(conn, "document", name="Ops").id
    update_document(conn, first, folder_id=folder)
    state = {"etag": ""}

    def fresh() -> str:
        response = client.get("/boot/nova")
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
        assert response.headers["etag"] == f'"{response.json()["version"]}"'
        return response.headers["etag"]

    def unchanged() -> None:
        response = client.get("/boot/nova", headers={"If-None-Match": state["etag"]})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == state["etag"]

    def changes(what: str, step: Callable[[], object]) -> None:
        step()
        response = client.get("/boot/nova", headers={"If-None-Match": state["etag"]})
        assert response.status_code == 200, f"still 304 after: {what}"
        assert response.headers["etag"] != state["etag"]
        state["etag"] = response.headers["etag"]
        unchanged()

    state["etag"] = fresh()
    unchanged()
    assert client.get("/boot/nova", headers={"If-None-Match": f'"x", W/{state["etag"]}'}).status_code == 304
    assert client.get("/boot/nova", headers={"If-None-Match": '"x"'}).status_code == 200

    # Nothing in nova's bundle changed.
    update_document(conn, unrelated, content_text="New text.")
    add_tag(conn, "document", unrelated, "boot:scout")
    unchanged()

    changes("an edit", lambda: update_document(conn, first, content_text="Edited."))
    changes("a new tag", lambda: add_tag(conn, "document", second, "pricing"))
    changes("an asset edit", lambda: update_asset(conn, asset, content_text="a,b,c"))
    changes("a pin", lambda: update_document(conn, second, pinned=True))
    changes("a folder rename", lambda: update_folder(conn, "document", folder, name="Operations"))
    changes("a new boot:all document", lambda: doc(conn, "Newcomer", "boot:all"))
    changes("a document gaining boot:nova", lambda: add_tag(conn, "document", unrelated, "boot:nova"))
    changes("a boot tag removed", lambda: remove_tag(conn, "document", unrelated, "boot:nova"))
    changes("an archive", lambda: archive_document(conn, first))
    changes("an asset archive", lambda: archive_asset(conn, asset))
    assert titles(client.get("/boot/nova").json()) == ["Newcomer", "Second"]


def test_etag_differs_per_representation_and_budget(conn: Conn, client: TestClient) -> None:
    agent(conn, "nova")
    doc(conn, "First", "boot:all")
    as_json = client.get("/boot/nova").headers["etag"]
    as_markdown = client.get("/boot/nova", headers={"Accept": MARKDOWN}).headers["etag"]
    budgeted = client.get("/boot/nova?max_tokens=500").headers["etag"]
    assert len({as_json, as_markdown, budgeted}) == 3
    # One representation's ETag does not validate the other.
    assert client.get("/boot/nova", headers={"Accept": MARKDOWN, "If-None-Match": as_json}).status_code == 200
    assert client.get("/boot/nova", headers={"Accept": MARKDOWN, "If-None-Match": as_markdown}).status_code == 304
    assert as_json == f'"{boot_version(conn, "nova")}"' == f'"{boot_bundle(conn, "nova").version}"'
    assert as_markdown == f'"{boot_version(conn, "nova", None, MARKDOWN)}"'
    assert f"Version {as_markdown.strip(chr(34))}:" in bundle_markdown(boot_bundle(conn, "nova", media_type=MARKDOWN))


# ---- the command line --------------------------------------------------------------------------------


def hq(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    env["HQ_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "knowledge", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_boot(conn: Conn, db_url: str) -> None:
    agent(conn, "nova")
    doc(conn, "First", "boot:all", text=TEN, pinned=True)
    doc(conn, "Second", "boot:nova", text=TEN)
    printed = hq(db_url, "boot", "nova")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == bundle_markdown(boot_bundle(conn, "nova", media_type=MARKDOWN))
    budgeted = hq(db_url, "boot", "nova", "--max-tokens", "12", "--json")
    assert budgeted.returncode == 0, budgeted.stderr
    assert json.loads(budgeted.stdout) == boot_bundle(conn, "nova", max_tokens=12).as_json()
    assert [o["title"] for o in json.loads(budgeted.stdout)["omitted"]] == ["Second"]
    missing = hq(db_url, "boot", "ghost")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == ["error: agent 'ghost' not found"]


def test_the_sample_workspace_has_a_boot_bundle_for_each_agent(conn: psycopg.Connection[Any], db_url: str) -> None:
    """`serve --sample` creates the agents its documents are tagged for: every one of them
    gets a bundle that starts with the boot:all documents and holds its own."""
    from knowledge.store.importer import import_folder, import_sample_agents, sample_dir

    assert import_sample_agents(conn) == 5
    assert import_sample_agents(conn) == 0  # again: nothing new
    import_folder(conn, sample_dir())
    with local_client(create_app(db_url)) as client:
        for slug in ("scout", "closer", "helpdesk", "builder", "ledger"):
            body = client.get(f"/boot/{slug}").json()
            tags = [set(item["tags"]) for item in body["items"]]
            assert tags and all("boot:all" in t or f"boot:{slug}" in t for t in tags), slug
            assert any(f"boot:{slug}" in t for t in tags), slug
            assert "boot:all" in tags[0], slug
