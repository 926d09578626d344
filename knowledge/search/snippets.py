"""Search snippets: a passage's text with its markdown syntax removed, cut to the words around
the query's and with those words marked. Made here from the passage the search returns
anyway: PostgreSQL's ts_headline parsed each hit's passage again (~2 ms a search at 100k
passages) and returned the markdown as it was.

Words match as the keyword index matches them: lowercased, English stop words dropped (the
list of PostgreSQL's `english` configuration), Snowball-stemmed (PostgreSQL's english_stem
and this stemmer disagree on a few words in a thousand: a missed highlight, never a missed hit).
"""

from __future__ import annotations

import html
import re
from bisect import bisect_left
from functools import lru_cache

import Stemmer

__all__ = ["Highlighter", "plain_text"]

FRAGMENT_CHARS = 240  # of text a snippet shows, at most (an agent's answer shows 240 of it)
_LEAD = 40  # characters of context shown before the stretch's first match, about

# PostgreSQL's tsearch_data/english.stop (the Snowball English stop words).
_ENGLISH_STOP = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is are
was were be been being have has had having do does did doing a an the and but if or because as until while
of at by for with about against between into through during before after above below to from up down in
out on off over under again further then once here there when where why how all any both each few more most
other some such no nor not only own same so than too very s t can will just don should now
"""
STOP_WORDS = frozenset(_ENGLISH_STOP.split())

_stemmer = Stemmer.Stemmer("english")
_WORD = re.compile(r"\w+")
_WORD_END = re.compile(r"\w*")
_OPEN, _CLOSE = "\x02", "\x03"  # around a match until the text is escaped (plain_text drops them)

# Markdown: a fence or a table's rule (dropped lines); what opens a line (heading, quote, bullet,
# task box); images and links (keep their text), autolinks; the marks always removed, and
# single * and _ (which may be text).
_FENCE = re.compile(r"^\s*(```|~~~)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LINE_START = re.compile(r"^[ \t]{0,3}(?:#{1,6}[ \t]+|>[ \t]?|[-*+][ \t]+(?:\[[ xX]\][ \t]+)?)+", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\](?:\([^)\n]*\)|\[[^\]\n]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_PAIRED_MARKS = re.compile(r"`+|\*\*+|~~|(?<!\w)__+|__+(?!\w)")
_SINGLE_MARKS = re.compile(r"[*_]")


def plain_text(markdown: str) -> str:
    """`markdown` as the text a reader sees: headings, quotes and bullets without their marks,
    links and images as their text, emphasis and code marks removed, fences dropped (their
    code kept), a table's rows as `cell; cell;` and its rule dropped. Whitespace collapsed."""
    text = markdown.replace(_OPEN, "").replace(_CLOSE, "") if _OPEN in markdown or _CLOSE in markdown else markdown
    # Each step only where its marks occur: a scan by a regular expression costs ~30 ns a
    # character, a test for a substring next to nothing.
    if "|" in text or "```" in text or "~~~" in text:
        text = "\n".join(_block_line(line) for line in text.splitlines())
    if ("#" in text or ">" in text or "- " in text or "* " in text or "+ " in text) and _LINE_START.search(text):
        text = _LINE_START.sub("", text)
    if "](" in text or "][" in text:
        text = _IMAGE_OR_LINK.sub(r"\1", text)
    if "<http" in text or "<mailto" in text:
        text = _AUTOLINK.sub(r"\1", text)
    if "`" in text or "**" in text or "~~" in text or "__" in text:
        text = _PAIRED_MARKS.sub("", text)
    if "*" in text or "_" in text:
        text = _SINGLE_MARKS.sub(_unmark, text)
    return " ".join(text.split())


def _block_line(line: str) -> str:
    """A line of a table or fence: a row as `cell; cell;`, a rule or fence as nothing."""
    if _FENCE.match(line) or _TABLE_RULE.match(line):
        return ""
    stripped = line.strip()
    # A row opens or closes with a pipe (a passage may start or end inside one).
    if stripped[:1] == "|" or stripped[-1:] == "|":
        return "; ".join(cell.strip() for cell in stripped.strip("|").split("|") if cell.strip()) + ";"
    return line


def _unmark(m: re.Match[str]) -> str:
    """A single * or _ as the text keeps it: gone where it opens or closes emphasis, kept
    inside a word (snake_case) or between spaces (2 * 3)."""
    text, at = m.string, m.start()
    before = text[at - 1] if at else " "
    after = text[at + 1] if at + 1 < len(text) else " "
    if (before.isalnum() and after.isalnum()) or (before.isspace() and after.isspace()):
        return m.group()
    return ""


def _lower(text: str) -> str:
    """`text` lowercased letter for letter, so that offsets stay (İ lowercases to two)."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c.lower()[0] for c in text)


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)  # type: ignore[no-any-return]


class Highlighter:
    """The words of one query, and snippets of passages with them marked."""

    def __init__(self, query: str) -> None:
        words = {w for w in _WORD.findall(_lower(query)) if w not in STOP_WORDS}
        self.stems = frozenset(_stem(w) for w in words)
        # Where a word with one of these stems may start: a stem keeps all but the last letter
        # of its word's start (studi: study, possibl: possibility; a few irregular words, such
        # as lying: lie, are the exceptions).
        self._starts = sorted({s[: max(2, len(s) - 1)] for s in self.stems})
        self._seen: dict[str, str | None] = {}  # lowercased word -> its stem if the query's

    def stem_of(self, word: str) -> str | None:
        """The stem of the lowercased `word` if it is one of the query's, else None."""
        if word not in self._seen:
            stem = None if word in STOP_WORDS else _stem(word)
            self._seen[word] = stem if stem in self.stems else None
        return self._seen[word]

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """The words of `text` with one of the query's stems: (start, end, stem), in order."""
        low = _lower(text)
        found: dict[int, tuple[int, int, str]] = {}
        for start in self._starts:
            at = low.find(start)
            while at >= 0:
                if at not in found and (at == 0 or not (low[at - 1].isalnum() or low[at - 1] == "_")):
                    end = _WORD_END.match(low, at).end()  # type: ignore[union-attr]
                    stem = self.stem_of(low[at:end])
                    if stem is not None:
                        found[at] = (at, end, stem)
                at = low.find(start, at + 1)
        return sorted(found.values())

    def snippet(self, passage: str) -> str:
        """The passage's plain text (`plain_text`), HTML-escaped, cut to the stretch of about
        FRAGMENT_CHARS characters around the query's words (`_stretch`), each matching word
        in <mark>...</mark>."""
        text = plain_text(passage)
        hits = self.matches(text) if self._starts else []
        begin, end = _stretch(text, hits)
        out: list[str] = []
        at = begin
        for start, stop, _ in hits[bisect_left(hits, (begin,)) :]:
            if stop > end:
                break
            out += (text[at:start], _OPEN, text[start:stop], _CLOSE)
            at = stop
        out.append(text[at:end])
        return html.escape("".join(out)).replace(_OPEN, "<mark>").replace(_CLOSE, "</mark>")


def _stretch(text: str, hits: list[tuple[int, int, str]]) -> tuple[int, int]:
    """The range of `text` to show: all of it when short; else the FRAGMENT_CHARS starting a
    little before a match that hold the most distinct query words of `hits` (then the most
    matches, then the earliest); the start of the text when nothing matches. Cuts fall
    between words."""
    if len(text) <= FRAGMENT_CHARS:
        return 0, len(text)
    if not hits:
        return _words(text, 0, FRAGMENT_CHARS)
    chosen, chosen_score = (0, 0), (0, 0)
    counts: dict[str, int] = {}  # stems of hits[lo:hi], the matches in the stretch
    lo = hi = 0
    for start, _, _ in hits:  # slide the stretch from match to match
        begin = max(0, start - _LEAD)
        end = min(len(text), begin + FRAGMENT_CHARS)
        while hits[lo][0] < begin:  # leaves the stretch (never this match: it starts after begin)
            stem = hits[lo][2]
            counts[stem] -= 1
            if not counts[stem]:
                del counts[stem]
            lo += 1
        while hi < len(hits) and hits[hi][0] < end:  # enters it
            counts[hits[hi][2]] = counts.get(hits[hi][2], 0) + 1
            hi += 1
        score = (len(counts), hi - lo)
        if score > chosen_score:
            chosen, chosen_score = (begin, end), score
    return _words(text, *chosen)


def _words(text: str, begin: int, end: int) -> tuple[int, int]:
    """`begin`..`end` narrowed to whole words: a cut inside a word moves to its edge."""
    if begin > 0 and not text[begin - 1].isspace():
        space = text.find(" ", begin, end)
        begin = space + 1 if space >= 0 else begin
    if end < len(text) and not text[end].isspace():
        space = text.rfind(" ", begin, end)
        end = space if space > begin else end
    return begin, end
