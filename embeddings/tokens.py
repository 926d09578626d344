"""Counting a text's word pieces with a model's own tokenizer (no torch loaded): what the
chunker measures passages with and the boot bundles' budgets count in."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

__all__ = ["TokenCounter", "load_tokenizer_counter"]

TokenCounter = Callable[[str], int]


def load_tokenizer_counter(model_dir: str | Path) -> TokenCounter:
    """A function counting the word pieces of a text, without [CLS]/[SEP], with the
    `tokenizer.json` in `model_dir` (truncation and padding switched off). Loads no torch.
    Raises FileNotFoundError when the directory has no tokenizer.json.

    For a BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece) the count is the sum
    of the counts of the text's space-separated words, each cached: a space, tab or line
    break always separates word pieces there, so the sum is exact, and repeated words make
    it many times faster than encoding the whole text. Other tokenizers encode every text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def encode(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    short = lru_cache(maxsize=1 << 17)(encode)
    long = lru_cache(maxsize=256)(encode)

    def count_each(text: str) -> int:
        return short(text) if len(text) <= 64 else long(text)

    additive = (
        isinstance(tokenizer.normalizer, normalizers.BertNormalizer)
        and isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
        and isinstance(tokenizer.model, models.WordPiece)
        and not any(re.search(r"\s", t.content) for t in tokenizer.get_added_tokens_decoder().values())
    )
    if not additive:
        return count_each

    def count_words(text: str) -> int:
        return sum(count_each(word) for word in _ASCII_SPACE.split(text) if word)

    return count_words


_ASCII_SPACE = re.compile(r"[ \t\n\r]+")
