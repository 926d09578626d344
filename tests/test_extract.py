"""Text extraction: TipTap, HTML and asset rows to markdown. Pure functions, no database."""

from __future__ import annotations

from typing import Any

import pytest

from knowledge.ingest.chunking import chunk_markdown
from knowledge.ingest.extract import (
    ExtractError,
    asset_markdown,
    document_markdown,
    html_to_markdown,
    tiptap_to_markdown,
    validate_tiptap,
)

from .tiptap import cell, doc, item, para, text

LINK = {"type": "link", "attrs": {"href": "https://example.com/refunds", "target": "_blank"}}

REFUND_POLICY = doc(
    {"type": "heading", "attrs": {"level": 1}, "content": [text("Refund policy")]},
    para(
        text("Customers on "),
        text("annual plans", "bold"),
        text(" may ask for a refund within "),
        text("30 days", "bold", "italic"),
        text(". See the "),
        text("refund form", LINK),
        text(" or run "),
        text("hq refunds list", "code"),
        text("."),
    ),
    {"type": "heading", "attrs": {"level": 2}, "content": [text("Steps")]},
    {
        "type": "orderedList",
        "attrs": {"start": 3},
        "content": [
            item(
                para(text("Check the invoice")),
                {
                    "type": "bulletList",
                    "content": [
                        item(para(text("paid by card"))),
                        item(
                            para(text("paid by transfer")),
                            {"type": "bulletList", "content": [item(para(text("SEPA")))]},
                        ),
                    ],
                },
            ),
            item(para(text("Refund "), text("in full", "strike")), para(text("Then confirm."))),
        ],
    },
    {
        "type": "taskList",
        "content": [
            {"type": "taskItem", "attrs": {"checked": True}, "content": [para(text("Email them"))]},
            {"type": "taskItem", "attrs": {"checked": False}, "content": [para(text("Close it"))]},
        ],
    },
    {
        "type": "blockquote",
        "content": [
            para(text("Never refund twice.")),
            para(text("Ask a lead", "italic"), {"type": "hardBreak"}, text("when unsure")),
        ],
    },
    {
        "type": "codeBlock",
        "attrs": {"language": "python"},
        "content": [text("# not a heading\nrefund(invoice)\n")],
    },
    {"type": "horizontalRule"},
    {
        "type": "table",
        "content": [
            {"type": "tableRow", "content": [cell("Plan", True), cell("Window", True)]},
            {"type": "tableRow", "content": [cell("Monthly"), cell("none | prorated")]},
            {"type": "tableRow", "content": [cell("Annual"), cell("30 days")]},
        ],
    },
    para({"type": "image", "attrs": {"src": "https://cdn.example.com/flow.png", "alt": "Flow"}}),
    para(text("# Hashtag lines stay text")),
)

REFUND_POLICY_MARKDOWN = """\
# Refund policy

Customers on **annual plans** may ask for a refund within ***30 days***. \
See the [refund form](https://example.com/refunds) or run `hq refunds list`.

## Steps

3. Check the invoice
   - paid by card
   - paid by transfer
     - SEPA
4. Refund ~~in full~~

   Then confirm.

- [x] Email them
- [ ] Close it

> Never refund twice.
>
> *Ask a lead*\x20\x20
> when unsure

```python
# not a heading
refund(invoice)
```

---

| Plan | Window |
| --- | --- |
| Monthly | none \\| prorated |
| Annual | 30 days |

![Flow](https://cdn.example.com/flow.png)

\\# Hashtag lines stay text"""


def test_tiptap_document_renders_to_markdown() -> None:
    assert tiptap_to_markdown(REFUND_POLICY) == REFUND_POLICY_MARKDOWN


def test_tiptap_code_and_escaped_hash_are_not_headings_to_the_chunker() -> None:
    chunks = chunk_markdown("Refunds", tiptap_to_markdown(REFUND_POLICY), lambda s: len(s.split()))
    paths = {chunk.heading_path for chunk in chunks}
    assert paths == {("Refund policy",), ("Refund policy", "Steps")}


def test_marks_stay_open_across_nodes_and_whitespace_moves_outside() -> None:
    rendered = tiptap_to_markdown(
        doc(
            para(
                text("Read ", "bold"),
                text("this", "bold", "italic"),
                text(" now ", "bold"),
                text("or "),
                text("run `x`", "code"),
            )
        )
    )
    assert rendered == "**Read *this* now** or `` run `x` ``"


def test_unknown_nodes_keep_their_text_and_unknown_marks_are_ignored() -> None:
    rendered = tiptap_to_markdown(
        doc(
            {"type": "callout", "attrs": {"tone": "warn"}, "content": [para(text("Heads up"))]},
            {"type": "details", "content": [text("Inline "), text("under", "underline")]},
            para(text("Hi "), {"type": "mention", "attrs": {"id": "u1", "label": "Ada"}}),
            {
                "type": "bullet_list",
                "content": [{"type": "list_item", "content": [para(text("a"))]}],
            },
        )
    )
    assert rendered == "Heads up\n\nInline under\n\nHi @Ada\n\n- a"


def test_code_block_fence_outgrows_backticks_in_the_code() -> None:
    block = {"type": "codeBlock", "content": [text("```\nnested\n```")]}
    assert tiptap_to_markdown(doc(block)) == "````\n```\nnested\n```\n````"


def test_empty_document_is_empty_markdown() -> None:
    assert tiptap_to_markdown({"type": "doc"}) == ""
    assert tiptap_to_markdown(doc(para(), {"type": "paragraph"})) == ""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "document: expected a JSON object, got a list"),
        ({"content": []}, 'document: "type" must be "doc", got None'),
        ({"type": "paragraph"}, 'document: "type" must be "doc", got \'paragraph\''),
        ({"type": "doc", "content": {}}, "content: expected a list, got an object"),
        (
            {"type": "doc", "content": [para(), "text"]},
            "content[1]: expected a node object, got a string",
        ),
        (doc({"content": []}), 'content[0]: node without a string "type"'),
        (
            doc(para(), para(), para(text("ok"), {"type": "text", "text": 5})),
            'content[2].content[1]: text node without a string "text"',
        ),
        (doc(para(text("a"), {"type": "text"})), "content[0].content[1]: text node without"),
        (doc({"type": "heading", "attrs": [1]}), "content[0].attrs: expected an object"),
        (doc(para({"type": "text", "text": "a", "marks": {}})), "content[0].content[0].marks:"),
        (doc(para({"type": "text", "text": "a", "marks": [3]})), "content[0].content[0].marks[0]"),
        (
            doc(para({"type": "text", "text": "a", "content": None})),
            "content[0].content[0].content",
        ),
    ],
)
def test_malformed_tiptap_is_rejected_with_its_path(value: Any, message: str) -> None:
    with pytest.raises(ExtractError) as raised:
        validate_tiptap(value)
    assert str(raised.value).startswith(message)
    with pytest.raises(ExtractError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        tiptap_to_markdown(value)
    assert isinstance(raised.value, ValueError)


def test_deeply_nested_tiptap_is_rejected_not_a_recursion_error() -> None:
    node: dict[str, Any] = para(text("deep"))
    for _ in range(150):
        node = {"type": "blockquote", "content": [node]}
    with pytest.raises(ExtractError, match="nested deeper than"):
        validate_tiptap(doc(node))


def test_valid_tiptap_passes_validation() -> None:
    validate_tiptap(REFUND_POLICY)


HTML = """<!doctype html>
<html><head><title>Internal title</title><style>p { color: red }</style>
<script>var leaked = "secret";</script></head>
<body>
<h1>Onboarding</h1>
<script>trackVisitor("nope")</script>
<p>Read the <a href="https://example.com/wiki">wiki</a> and set up <b>snake_case</b> names.</p>



<h2>Accounts</h2>
<ul><li>Email</li><li>Chat<ul><li>Slack</li></ul></li></ul>
<table>
  <tr><th>Tool</th><th>Owner</th></tr>
  <tr><td>CRM</td><td>Sales | Support</td></tr>
</table>
<pre><code class="language-bash">make test</code></pre>
<noscript>Enable JavaScript</noscript>
</body></html>"""

HTML_MARKDOWN = """\
# Onboarding

Read the [wiki](https://example.com/wiki) and set up **snake_case** names.

## Accounts

- Email
- Chat
  - Slack

| Tool | Owner |
| --- | --- |
| CRM | Sales \\| Support |

```bash
make test
```"""


def test_html_converts_and_drops_scripts_styles_and_head() -> None:
    markdown = html_to_markdown(HTML)
    assert markdown == HTML_MARKDOWN
    for dropped in ("Internal title", "color", "secret", "trackVisitor", "JavaScript"):
        assert dropped not in markdown


def test_html_blank_lines_collapse() -> None:
    assert html_to_markdown("<p>a</p>\n\n\n\n<div>\n \n\n</div><p>b</p>") == "a\n\nb"


def test_document_markdown_by_format() -> None:
    assert document_markdown("tiptap", REFUND_POLICY, None) == REFUND_POLICY_MARKDOWN
    assert document_markdown("markdown", None, "# Kept\n\nas *is*  \n") == "# Kept\n\nas *is*  \n"
    assert document_markdown("html", None, "<h2>Hi</h2><p>there</p>") == "## Hi\n\nthere"


def test_document_markdown_rejects_bad_input() -> None:
    with pytest.raises(ExtractError, match="unknown content format 'docx'"):
        document_markdown("docx", None, "x")
    with pytest.raises(ExtractError, match="document: expected a JSON object, got null"):
        document_markdown("tiptap", None, None)
    with pytest.raises(ExtractError, match="html document without content_text"):
        document_markdown("html", None, None)


def asset(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": "Asset",
        "description": None,
        "asset_type": "other",
        "url": None,
        "mime_type": None,
        "size_bytes": None,
        "content_text": None,
        "extracted_text": None,
        "metadata": {},
        "tags": [],
    }
    row.update(fields)
    return row


ASSET_MARKDOWN_CASES = {
    "sop with html text": (
        {
            "name": "Refund SOP",
            "asset_type": "sop",
            "url": "https://wiki.example.com/sop/refunds",
            "description": "How support refunds a customer.",
            "content_text": "<h2>Steps</h2><ol><li>Check the invoice</li><li>Refund</li></ol>",
            "tags": ["support"],
            "extracted_text": "stale output of an earlier run",
        },
        "Type: SOP\n"
        "Link: https://wiki.example.com/sop/refunds\n\n"
        "How support refunds a customer.\n\n"
        "## Steps\n\n"
        "1. Check the invoice\n"
        "2. Refund",
    ),
    "link": (
        {
            "name": "Stripe dashboard",
            "asset_type": "link",
            "url": "https://dashboard.stripe.com",
            "description": "Payments, refunds and disputes.",
            "metadata": {"title": "Stripe", "sha256": "ab12"},
        },
        "Type: Link\nName: Stripe dashboard\nLink: https://dashboard.stripe.com\nTitle: Stripe\n\n"
        "Payments, refunds and disputes.",
    ),
    "image with alt and caption": (
        {
            "name": "refund-flow.png",
            "asset_type": "image",
            "url": "https://cdn.example.com/refund-flow.png",
            "mime_type": "image/png",
            "size_bytes": 48213,
            "metadata": {"alt": "Refund flow chart", "caption": "From request\nto payout", "width": 800},
        },
        "Type: Image\n"
        "Name: refund-flow.png\n"
        "Link: https://cdn.example.com/refund-flow.png\n"
        "File type: image/png\n"
        "Alt text: Refund flow chart\n"
        "Caption: From request to payout",
    ),
    "video": (
        {
            "name": "Demo",
            "asset_type": "video",
            "mime_type": "video/mp4",
            "metadata": {"duration": 3725, "transcript": "Hello and welcome."},
        },
        "Type: Video\nName: Demo\nFile type: video/mp4\nDuration: 1:02:05\n\n## Transcript\n\nHello and welcome.",
    ),
    "script": (
        {"asset_type": "script", "content_text": "# install\npip install x", "metadata": {}},
        "Type: Script\n\n```\n# install\npip install x\n```",
    ),
}


@pytest.mark.parametrize(("fields", "expected"), ASSET_MARKDOWN_CASES.values(), ids=ASSET_MARKDOWN_CASES.keys())
def test_asset_markdown(fields: dict[str, Any], expected: str) -> None:
    assert asset_markdown(asset(**fields)) == expected
