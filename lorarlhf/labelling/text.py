"""Text as the annotator sees it: proper Unicode only, hidden characters shown, look-alike responses found.

A JSON file can hold strings that are not Unicode text at all: a lone surrogate ("\\ud83d", half of an
emoji cut in two by a JavaScript tool) is valid JSON but cannot be encoded, so it is refused where the file
is read. It can also hold text that displays as something it is not (Unicode TR #36, "Unicode Security
Considerations"): a right-to-left override (TR #9) shows "\\u202etxt.exe" as "exe.txt", and a zero-width
space or a no-break space makes two different responses read the same. The page shows every such
character as ⟨U+XXXX⟩ and marks responses that read the same; what is stored is the text exactly as given.
"""

from __future__ import annotations

import unicodedata
from difflib import SequenceMatcher

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""The marks, embeddings, overrides and isolates of the bidirectional algorithm (TR #9): all invisible."""
INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
"""Characters that draw nothing and are not format characters (category Cf): the combining grapheme
joiner, the Hangul fillers, the Khmer inherent vowels."""
JOINERS = frozenset("\u200c\u200d")
SHOWN_CONTROLS = frozenset("\t\n\r")
# A subdivision flag (England, Scotland, Wales) is a black flag, tag characters and a cancel tag; tag
# characters anywhere else are invisible text ("ASCII smuggling"), so only this sequence keeps them.
BLACK_FLAG, TAGS, CANCEL_TAG = "\U0001f3f4", range(0xE0020, 0xE007F), "\U000e007f"


def unicode_problem(text: str) -> str | None:
    """Why `text` is not proper Unicode text, or None: a lone surrogate cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        before = text[max(0, error.start - 20) : error.start]
        return (
            f"not valid Unicode: a lone surrogate U+{ord(text[error.start]):04X} at character {error.start}"
            f"{f' (after {before!r})' if before else ''}, half of a character cut in two (e.g. an emoji split "
            "by a tool that counts UTF-16 units); fix the text where it was made"
        )
    return None


def proper(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, the replacement character."""
    if unicode_problem(text) is None:
        return text
    return "".join("\ufffd" if unicodedata.category(ch) == "Cs" else ch for ch in text)


def is_hidden(ch: str) -> bool:
    """A character that draws nothing, or changes how the text around it is drawn: control (but tab and
    line breaks), format, line/paragraph separator, surrogate, or one of INVISIBLE."""
    if ch in SHOWN_CONTROLS:
        return False
    return ch in INVISIBLE or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")


def visible(text: str) -> str:
    """The text with each hidden character written as ⟨U+XXXX⟩, so it shows what it holds.

    Two uses of hidden characters are how text is written, and are kept: a zero-width (non-)joiner between
    two letters, marks or symbols from U+0590 on (Persian and Indic words, emoji sequences such as 👩‍💻),
    and the tag characters of a subdivision flag."""
    shown, flag_until = [], -1
    for i, ch in enumerate(text):
        if ch == BLACK_FLAG:
            flag_until = _flag_end(text, i)
        if not is_hidden(ch) or i <= flag_until or (ch in JOINERS and _joins(text, i)):
            shown.append(ch)
        else:
            shown.append(f"⟨U+{ord(ch):04X}⟩")
    return "".join(shown)


def _flag_end(text: str, start: int) -> int:
    end = start + 1
    while end < len(text) and ord(text[end]) in TAGS:
        end += 1
    return end if end > start + 1 and text[end : end + 1] == CANCEL_TAG else -1


def _joins(text: str, i: int) -> bool:
    def joinable(ch: str) -> bool:
        category = unicodedata.category(ch)
        return (ord(ch) >= 0x590 and category[0] in "LM") or category in ("So", "Sk")

    return 0 < i < len(text) - 1 and joinable(text[i - 1]) and joinable(text[i + 1])


def reading(text: str) -> str:
    """The text as it reads on screen: hidden characters dropped, every kind of space a space, composed (NFC)."""
    kept = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in text if not is_hidden(ch))
    return unicodedata.normalize("NFC", kept).strip()


def look_alikes(texts, names) -> list[tuple[int, int, str]]:
    """(i, j, how they differ) for each pair of different texts that read the same (see `reading`).

    names: what to call each text in `how`, e.g. "response 0" or "A"."""
    readings = [reading(text) for text in texts]
    return [
        (i, j, how_they_differ(texts[i], texts[j], names[i], names[j]))
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if readings[i] == readings[j] and texts[i] != texts[j]
    ]


def how_they_differ(a: str, b: str, name_a: str, name_b: str, *, most: int = 3) -> str:
    """The characters where `a` and `b` differ, named, e.g. "A has U+00A0 NO-BREAK SPACE where B has U+0020 SPACE"."""
    found: list[str] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        x, y = a[i1:i2], b[j1:j2]
        if not y:
            part = f"{name_a} has {_names(x)} that {name_b} has not"
        elif not x:
            part = f"{name_b} has {_names(y)} that {name_a} has not"
        else:
            part = f"{name_a} has {_names(x)} where {name_b} has {_names(y)}"
        if part not in found:
            found.append(part)
    more = f"; and {len(found) - most} more differences" if len(found) > most else ""
    composed = unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)
    return ("composed differently (NFC vs NFD): " if composed else "") + "; ".join(found[:most]) + more


def _names(text: str, most: int = 3) -> str:
    names = [f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip() for ch in text[:most]]
    return " + ".join(names) + (f" + {len(text) - most} more" if len(text) > most else "")
