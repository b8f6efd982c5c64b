"""Which script a reply is written in: the blog's measure of "answers in Japanese".

A reply is **mainly Japanese** when it holds more kana + kanji characters than Latin letters (strictly more, so an
empty reply, one of digits and punctuation only, and a tie are all *not* Japanese). Characters are counted, not
words: a Japanese sentence with one long English name can count as Latin (``これはPythonです`` is 5 vs 6): the
measure is deliberately simple and the same for both models, and the replies are kept so a reader can check.

Counted as Japanese: hiragana U+3040-309F, katakana U+30A0-30FF and U+31F0-31FF, half-width katakana U+FF66-FF9F,
kanji (CJK unified ideographs U+4E00-9FFF, extension A U+3400-4DBF, compatibility U+F900-FAFF, extension B and
later U+20000-2FFFF) and the marks 々 〆 ヶ (U+3005, U+3006, U+30F6). Not counted either way: Japanese punctuation
(、。「」・゠), digits, spaces, symbols.
Counted as Latin: A-Z a-z, full-width Ａ-Ｚ ａ-ｚ, and the accented letters of Latin-1 and Latin Extended-A/B
(U+00C0-024F, without × and ÷).
"""

from __future__ import annotations

from dataclasses import dataclass

_JAPANESE_RANGES = ((0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F), (0x4E00, 0x9FFF),
                    (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF), (0x3005, 0x3006))
_LATIN_RANGES = ((0x41, 0x5A), (0x61, 0x7A), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0xC0, 0x24F))
_NOT_LATIN = {0xD7, 0xF7}  # × ÷ sit inside Latin-1's letter block
_NOT_JAPANESE = {0x30A0, 0x30FB}  # ゠ ・ are punctuation inside the katakana block


def _in(o: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= o <= hi for lo, hi in ranges)


def is_japanese_char(ch: str) -> bool:
    """Kana or kanji (see the module docstring for the exact ranges)."""
    o = ord(ch)
    return _in(o, _JAPANESE_RANGES) and o not in _NOT_JAPANESE


def is_latin_letter(ch: str) -> bool:
    """A Latin letter, ASCII, full-width or accented."""
    o = ord(ch)
    return _in(o, _LATIN_RANGES) and o not in _NOT_LATIN


@dataclass(frozen=True)
class ScriptCount:
    japanese: int  # kana + kanji characters
    latin: int  # Latin letters

    @property
    def mainly_japanese(self) -> bool:
        return self.japanese > self.latin


def count_script(text: str) -> ScriptCount:
    """Kana+kanji and Latin letters in ``text``."""
    ja = sum(1 for ch in text if is_japanese_char(ch))
    la = sum(1 for ch in text if is_latin_letter(ch))
    return ScriptCount(ja, la)


def mainly_japanese(text: str) -> bool:
    """True when kana + kanji characters outnumber Latin letters (strictly)."""
    return count_script(text).mainly_japanese


def japanese_share(replies: list[str]) -> float:
    """The share of replies that are mainly Japanese (0.0-1.0); no replies is an error, not 0."""
    if not replies:
        raise ValueError("japanese_share: no replies")
    return sum(1 for r in replies if mainly_japanese(r)) / len(replies)
