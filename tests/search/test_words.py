"""How a query's text is cut into words, the same for every engine (query_words, WORD)."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from directory.search import WORD, query_words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('Vélo -rouge "à donner"', ["vélo", "rouge", "à", "donner"]),
        # Devanagari's vowel signs and virama, Tamil's pulli, Hebrew's points and a
        # decomposed accent are combining marks: each word is one word, not its letters.
        ("हिन्दी पुस्तकें", ["हिन्दी", "पुस्तकें"]),
        ("தமிழ் புத்தகங்கள்", ["தமிழ்", "புத்தகங்கள்"]),
        ("שָׁלוֹם", ["שָׁלוֹם"]),
        ("ve\u0301lo", ["ve\u0301lo"]),
        # A mark with no letter before it starts no word.
        ("\u0301 abc", ["abc"]),
    ],
)
def test_a_query_is_cut_into_whole_words(text, words):
    assert query_words(text) == words


def test_a_hindi_query_of_a_few_words_counts_a_few_words():
    # Cut at its marks, this query of 10 words counted 17, past the 16 a query may have.
    assert len(query_words("मुझे हिन्दी में लिखी पुरानी किताबें और पत्रिकाएँ चाहिए, कृपया")) == 10


def test_every_combining_mark_continues_a_word():
    # WORD's class of marks is read from planes 0, 1 and 14 only, where Unicode has put
    # every mark so far: the whole of it is scanned here, once.
    marks = [
        chr(code) for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code))[0] == "M"
    ]
    assert marks
    assert [mark for mark in marks if WORD.fullmatch("a" + mark) is None] == []
