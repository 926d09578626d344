"""Chunking: markdown split into passages that fit the embedding model's window.

all-MiniLM-L6-v2 reads at most 256 word pieces including [CLS] and [SEP] and silently drops
the rest, so every passage is measured with the model's own tokenizer and kept within
`max_tokens` (254). Passages follow the document's structure: headings open sections, blocks
(paragraphs, lists, tables, code) are packed whole, and only a block too large on its own is
cut: at list items or lines, sentences, words, and at last characters. Where a long section
is cut depends on the nearby text only, so an edit changes the passages around it and the
worker, which skips passages whose `passage_hash` it has seen, re-embeds only those.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import accumulate

from embeddings.tokens import TokenCounter, load_tokenizer_counter
from knowledge.ingest.markdown_blocks import Section, parse_sections, split_levels, split_span, strip_span

__all__ = ["Chunk", "chunk_markdown", "load_tokenizer_counter", "passage_hash"]


@dataclass(frozen=True)
class Chunk:
    """One passage of a document.

    `content` is exactly `markdown[char_start:char_end]`: a contiguous slice without leading
    or trailing whitespace, shown to the user. Heading lines are not part of it; they are in
    `heading_path` (a heading with nothing under it is a passage of its own, the heading line
    its content). `indexed_text` is what is embedded and keyword-indexed: the title, the
    heading path joined with " > " and the content, separated as in
    `"Refund policy\\nPricing > Annual plans\\n\\n<content>"` (parts that are empty are left
    out). `token_count` is `count_tokens(indexed_text)`, never more than `max_tokens`.
    """

    index: int
    heading_path: tuple[str, ...]
    content: str
    indexed_text: str
    token_count: int
    char_start: int
    char_end: int


def passage_hash(indexed_text: str, model: str) -> str:
    """Hex sha256 of `model + "\\0" + indexed_text`: equal hashes need no new embedding."""
    return hashlib.sha256(f"{model}\0{indexed_text}".encode()).hexdigest()


@dataclass(frozen=True)
class _Unit:
    """A span packed whole. `levels` cut it further (for overlap); a `solo` unit is a piece of
    one enormous word and stands alone, since pieces glued back together count differently;
    a `first` unit starts a block, the best place for a passage to start."""

    start: int
    end: int
    tokens: int
    levels: tuple[str, ...]
    solo: bool = False
    first: bool = False


# ---- packing ----------------------------------------------------------------------------------


class _Chunker:
    """One run of `chunk_markdown`: the document, its counter and the passages so far."""

    def __init__(self, title: str, md: str, count_tokens: TokenCounter, max_tokens: int, overlap: int) -> None:
        self.md = md
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.title = self._fit(" ".join(title.split()), max_tokens // 4)
        self.heads: dict[tuple[str, ...], tuple[str, int]] = {}
        self.chunks: list[Chunk] = []

    def run(self) -> list[Chunk]:
        if not self.md.strip():
            if self.title:
                self._append((), 0, 0, self.title, self.count_tokens(self.title))
            return self.chunks
        sections = parse_sections(self.md)
        for k, section in enumerate(sections):
            if section.blocks:
                self._section(section)
            elif section.heading is not None:
                has_child = k + 1 < len(sections) and sections[k + 1].level > section.level
                if not has_child:
                    self._emit(section.path, *section.heading)
        return self.chunks

    def _fit(self, text: str, limit: int) -> str:
        """A prefix of `text` within `limit` tokens, after a whole word if there is one."""
        total = self.count_tokens(text)
        if total <= limit:
            return text
        guess = int(0.9 * limit * len(text) / total)
        end = _cut(0, len(text), lambda a, b: self.count_tokens(text[a:b]), limit, guess)
        return text[: text.rfind(" ", 0, end + 1)] if " " in text[1 : end + 1] else text[:end]

    def _head(self, path: tuple[str, ...]) -> tuple[str, int]:
        """The title and heading-path lines that open every indexed text of a section, and
        their token count. A path over a quarter of the window loses its outer headings."""
        if path not in self.heads:
            names = [name for name in path if name]
            while len(names) > 1 and self.count_tokens(" > ".join(names)) > self.max_tokens // 4:
                names.pop(0)
            trail = self._fit(" > ".join(names), self.max_tokens // 4)
            head = "\n".join(part for part in (self.title, trail) if part)
            self.heads[path] = head, self.count_tokens(head) if head else 0
        return self.heads[path]

    def _indexed(self, path: tuple[str, ...], content: str) -> str:
        head = self._head(path)[0]
        return f"{head}\n\n{content}" if head and content else head or content

    def _section(self, section: Section) -> None:
        budget = self.max_tokens - self._head(section.path)[1]
        sizes = [self.count_tokens(self.md[s:e]) for s, e in section.blocks]
        if sum(sizes) <= budget:
            whole = [_Unit(s, e, n, ()) for (s, e), n in zip(section.blocks, sizes, strict=True)]
            self._emit(section.path, whole[0].start, whole[-1].end, whole)
            return
        # Packing leaves room for the overlap, so that overlap never moves a boundary.
        overlap = min(self.overlap, budget // 4)
        limit = budget - overlap
        units: list[_Unit] = []
        for (s, e), size in zip(section.blocks, sizes, strict=True):
            pieces = self._units(s, e, size, limit, split_levels(self.md, s))
            units += [replace(pieces[0], first=True), *pieces[1:]]
        previous: list[_Unit] | None = None
        for group in self._pack(units, limit):
            start = group[0].start
            if previous is not None and not group[0].solo:
                overlap_start = self._overlap_start(previous, overlap)
                start = start if overlap_start is None else overlap_start
            self._emit(section.path, start, group[-1].end, group)
            previous = group

    def _units(self, start: int, end: int, tokens: int, limit: int, levels: tuple[str, ...]) -> list[_Unit]:
        if tokens <= limit:
            return [_Unit(start, end, tokens, levels)]
        while levels:
            spans = split_span(levels[0], self.md, start, end)
            levels = levels[1:]
            if len(spans) > 1:
                units: list[_Unit] = []
                for s, e in spans:
                    units.extend(self._units(s, e, self.count_tokens(self.md[s:e]), limit, levels))
                return units
        units = []
        average = chars_per_token = (end - start) / max(tokens, 1)
        while start < end:
            guess = start + int(0.9 * limit * min(average, chars_per_token))
            cut = _cut(start, end, lambda a, b: self.count_tokens(self.md[a:b]), limit, guess)
            units.append(_Unit(start, cut, self.count_tokens(self.md[start:cut]), (), solo=True))
            chars_per_token = (cut - start) / max(units[-1].tokens, 1)
            start = cut
        return units

    def _pack(self, units: list[_Unit], limit: int) -> list[list[_Unit]]:
        """Consecutive units in passages of at most `limit` tokens.

        Where passages start is decided by nearby content, not by position: a unit starts
        one when it outranks every unit within `limit // 2` tokens before and after it (a
        block start outranks a sentence; ties go by a hash of the text), unless that would
        leave a passage of less than `limit // 4` tokens. A run between two such units that
        is still too long is packed greedily. An edit thus moves only the cuts near it, and
        the worker re-embeds a passage or two rather than the rest of the section."""
        reach, least = limit // 2, limit // 4
        ranks = [(u.first, zlib.crc32(self.md[u.start : u.end].encode())) for u in units]
        offsets = list(accumulate((u.tokens for u in units), initial=0))
        # Solo units stand alone, so they end the runs that passages are cut from.
        run_ends = [len(units)] * len(units)
        for k in range(len(units) - 2, -1, -1):
            run_ends[k] = k + 1 if units[k + 1].solo else run_ends[k + 1]

        def outranks_neighbours(k: int) -> bool:
            m = k - 1
            while m >= 0 and offsets[k] - offsets[m] <= reach:
                if ranks[m] >= ranks[k]:
                    return False
                m -= 1
            m = k + 1
            while m < len(units) and offsets[m] - offsets[k] <= reach:
                if ranks[m] > ranks[k]:
                    return False
                m += 1
            return True

        groups: list[list[_Unit]] = []
        used = 0
        for k, unit in enumerate(units):
            if (
                k == 0
                or unit.solo
                or units[k - 1].solo
                or used + unit.tokens > limit
                or (used >= least and offsets[run_ends[k]] - offsets[k] >= least and outranks_neighbours(k))
            ):
                groups.append([])
                used = 0
            groups[-1].append(unit)
            used += unit.tokens
        return groups

    def _overlap_start(self, previous: list[_Unit], budget: int) -> int | None:
        """Where the repeated tail of the previous passage begins: as many whole units as fit
        `budget`; failing even one, the finest whole items, lines or sentences, then words."""
        start = None
        for unit in reversed(previous):
            if unit.solo:
                break
            if unit.tokens <= budget:
                budget -= unit.tokens
                start = unit.start
                continue
            if start is not None:
                break
            for level in dict.fromkeys([*unit.levels, "words"]):
                part = self._suffix(split_span(level, self.md, unit.start, unit.end), budget)
                if part is not None:
                    return part
            break
        return start

    def _suffix(self, spans: list[tuple[int, int]], budget: int) -> int | None:
        start = None
        for s, e in reversed(spans):
            budget -= self.count_tokens(self.md[s:e])
            if budget < 0:
                break
            start = s
        return start

    def _emit(self, path: tuple[str, ...], start: int, end: int, units: list[_Unit] | None = None) -> None:
        """Append the passage `md[start:end]`, checked with one count of its indexed text.
        Packing sums the parts; should the counter not be additive over whitespace and the
        whole come out larger, the passage is cut again: without overlap, in halves, and at
        last by characters checked one by one."""
        content = self.md[start:end]
        indexed = self._indexed(path, content)
        tokens = self.count_tokens(indexed)
        if tokens <= self.max_tokens:
            self._append(path, start, end, indexed, tokens)
        elif units and start < units[0].start:
            self._emit(path, units[0].start, end, units)
        elif units and len(units) > 1:
            half = len(units) // 2
            self._emit(path, units[0].start, units[half - 1].end, units[:half])
            self._emit(path, units[half].start, end, units[half:])
        else:

            def measure(a: int, b: int) -> int:
                return self.count_tokens(self._indexed(path, self.md[a:b]))

            chars_per_token = (end - start) / tokens
            while start < end:
                guess = start + int(0.9 * self.max_tokens * chars_per_token)
                cut = _cut(start, end, measure, self.max_tokens, guess)
                space = max(self.md.rfind(c, start, cut) for c in " \n\t")
                if cut < end and space > start and measure(start, space) <= self.max_tokens:
                    cut = space
                piece_start, piece_end = strip_span(self.md, start, cut)
                piece = self._indexed(path, self.md[piece_start:piece_end])
                self._append(path, piece_start, piece_end, piece, self.count_tokens(piece))
                start = strip_span(self.md, cut, end)[0]

    def _append(self, path: tuple[str, ...], start: int, end: int, text: str, n: int) -> None:
        self.chunks.append(Chunk(len(self.chunks), path, self.md[start:end], text, n, start, end))


def _cut(start: int, end: int, measure: Callable[[int, int], int], limit: int, guess: int) -> int:
    """A cut in (start, end] with `measure(start, cut) <= limit`: `guess` (clamped) if it
    fits, else a shorter cut estimated from what the failed one measured, and so on.
    Raises ValueError when not one character fits."""
    cut = min(max(guess, start + 1), end)
    while (tokens := measure(start, cut)) > limit:
        if cut == start + 1:
            raise ValueError("a single character does not fit the token budget")
        shorter = int((cut - start) * 0.95 * limit / tokens)
        cut = start + max(1, min(cut - start - 1, shorter))
    return cut


def chunk_markdown(
    title: str,
    markdown: str,
    count_tokens: TokenCounter,
    *,
    max_tokens: int = 254,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """Split `markdown` into passages whose `indexed_text` holds at most `max_tokens` tokens
    by `count_tokens` (which counts without special tokens: 254 leaves room for [CLS] and
    [SEP] in a 256 window). Nothing is dropped: every non-blank character outside heading
    lines is in some passage, and heading text is in the heading paths.

    A section that fits is one passage. A longer one is cut into passages of whole blocks,
    each after the first repeating about `overlap_tokens` (at most a quarter of the room left
    by title and path) of the previous one, in whole sentences where possible. Blank markdown
    gives one passage holding only the title, or none when the title is blank too. The
    result is deterministic. Raises ValueError for `max_tokens` < 16 or `overlap_tokens` < 0.
    """
    if max_tokens < 16:
        raise ValueError(f"max_tokens must be at least 16, got {max_tokens}")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must not be negative, got {overlap_tokens}")
    return _Chunker(title, markdown, count_tokens, max_tokens, overlap_tokens).run()
