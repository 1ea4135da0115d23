"""Which characters text may hold, for every layer that takes text from elsewhere: the
API's fields, the CLI's portal profiles, a webhook receiver's error answers.

Control characters break logs and terminals, and PostgreSQL text cannot hold NUL."""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls except tab and line ends.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# The Unicode line and paragraph separators count as line breaks (allowed in multi-line
# text only).
LINE_BREAKS = re.compile(r"[\r\n\t\u2028\u2029]")
SINGLE_LINE_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Letters and symbols that show as nothing: the Hangul fillers and the blank Braille
# pattern (a name or title made of them looks empty, and hides who wrote it).
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_blank(text: str) -> bool:
    """Whether `text` would show as nothing: only spaces, format characters (zero-width
    spaces and joiners, the byte order mark, direction marks: Unicode's Cf) and blank
    letters. Most text answers at its first character."""
    return all(
        char.isspace() or char in BLANK_LETTERS or unicodedata.category(char) == "Cf"
        for char in text
    )
