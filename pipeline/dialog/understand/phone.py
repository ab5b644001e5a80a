"""Phone numbers as callers say them and Whisper writes them: digits, kanji, kana readings, English words."""

from __future__ import annotations

import logging
import re

from pipeline.dialog.understand.text import _EN_TEENS, _EN_TENS, _EN_UNITS, _KANJI_DIGITS, normalize

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- phone numbers

_KANA_READINGS = {
    "ゼロ": "0",
    "レイ": "0",
    "マル": "0",
    "イチ": "1",
    "ニー": "2",
    "ニイ": "2",
    "ゴオ": "5",
    "ニ": "2",
    "サン": "3",
    "ヨン": "4",
    "シ": "4",
    "ゴー": "5",
    "ゴ": "5",
    "ロク": "6",
    "ナナ": "7",
    "シチ": "7",
    "ハチ": "8",
    "キュウ": "9",
    "キュー": "9",
    "ク": "9",
}
_KANA_READING_LIST = sorted(_KANA_READINGS, key=len, reverse=True)
_KANA_SEPARATORS = {"ハイフン", "ダッシュ", "ノ"}
_EN_DIGIT_WORDS = {**{k: str(v) for k, v in _EN_UNITS.items()}, "oh": "0", "o": "0", "nought": "0"}
_EN_SEP_WORDS = {"dash", "hyphen"}
_PHONE_TOKEN_RE = re.compile(
    r"(?P<num>\d+)|(?P<kan>[〇零一二三四五六七八九]+)|(?P<kana>[ぁ-ゖー]+|[ァ-ヺー]+)|(?P<word>[a-z]+)"
    r"|(?P<sep>[\s\-,、。・()\[\]]+)|(?P<other>.)",
    re.S,
)
_PLUS81_RE = re.compile(r"\+\s*81[\s-]*(?:\(\s*0\s*\)[\s-]*)?")


def _hira_to_kata(s: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in s)


def _decompose_kana(s: str) -> list[str] | None:
    """Split a katakana run into digit readings ("ゼロキューゼロ" -> 0 9 0), or None if it is a word."""
    n = len(s)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for i in range(n):
        if best[i] is None:
            continue
        for r in _KANA_READING_LIST:
            if s.startswith(r, i):
                j = i + len(r)
                while j < n and s[j] == "ー":  # drawn-out vowels: "イチー", "ゴーー"
                    j += 1
                if best[j] is None:
                    best[j] = best[i] + [_KANA_READINGS[r]]  # type: ignore[operator]
    return best[n]


_COPULAS = {"デス", "デ", "ダ", "ネ", "ヨ", "デスネ", "デスヨ", "デショウ", "デゴザイマス"}


def _partial_kana(kata: str) -> list[tuple[str, str]]:
    """A kana run that is not all digits may still end or start with them: "バンゴウハゼロキューゼロ"."""
    if len(kata) > 40:  # long prose: not worth the quadratic search
        return [("b", "")]
    for i in range(1, len(kata) - 1):
        digits = _decompose_kana(kata[i:])
        # one reading after a particle counts ("ばんごうはぜろ、…"), but not the さん of "たなかさん"
        if digits is not None and (len(digits) >= 2 or kata[i - 1] in "ハガモヲ"):
            return [("b", ""), ("d", "".join(digits))]
    for j in range(len(kata) - 1, 0, -1):
        digits = _decompose_kana(kata[:j])
        # one reading before a copula counts ("…、いちです")
        if digits is not None and (len(digits) >= 2 or kata[j:] in _COPULAS):
            return [("d", "".join(digits)), ("b", "")]
    return [("b", "")]


def _phone_runs(norm: str) -> list[str]:
    """Digit runs: digits joined across separators, broken by anything that is not a digit reading."""
    text = _PLUS81_RE.sub("0", norm.lower())
    items: list[tuple[str, str]] = []  # ("d", digits) | ("s", "") | ("b", "") | ("weak", digits) | ...
    for m in _PHONE_TOKEN_RE.finditer(text):
        kind = m.lastgroup
        s = m.group(0)
        if kind == "num":
            items.append(("d", s))
        elif kind == "kan":
            items.append(("d", "".join(str(_KANJI_DIGITS[c]) for c in s)))
        elif kind == "sep":
            items.append(("s", s))
        elif kind == "kana":
            for piece in re.split("(の)", s):
                if not piece:
                    continue
                kata = _hira_to_kata(piece)
                if piece == "の" or kata in _KANA_SEPARATORS or set(kata) == {"ー"}:
                    items.append(("s", ""))
                    continue
                digits = _decompose_kana(kata)
                if digits is None:
                    items.extend(_partial_kana(kata))
                elif len(digits) >= 2 or piece == kata:
                    items.append(("d", "".join(digits)))
                else:
                    # a lone hiragana reading is usually a particle (に, ご, し): decided by its neighbours
                    items.append(("weak", "".join(digits)))
        elif kind == "word":
            if s in _EN_DIGIT_WORDS:
                items.append(("oh", "0") if s in ("oh", "o") else ("w", _EN_DIGIT_WORDS[s]))
            elif s in _EN_TEENS:
                items.append(("w", str(_EN_TEENS[s])))
            elif s in _EN_TENS:
                items.append(("tens", str(_EN_TENS[s] // 10)))
            elif s in ("double", "triple"):
                items.append(("mul", "2" if s == "double" else "3"))
            elif s == "hundred":
                items.append(("w", "00"))
            elif s in _EN_SEP_WORDS:
                items.append(("s", ""))
            else:
                items.append(("b", ""))
        else:
            items.append(("b", ""))

    def neighbour(i: int, step: int) -> str:
        j = i + step
        while 0 <= j < len(items) and items[j][0] == "s":
            j += step
        return items[j][0] if 0 <= j < len(items) else "edge"

    def raw_neighbour(i: int, step: int) -> str:
        j = i + step
        return items[j][0] if 0 <= j < len(items) else "edge"

    runs: list[str] = []
    cur: list[str] = []
    mult = 1
    i = 0
    while i < len(items):
        kind, val = items[i]
        if kind == "oh":
            # "oh" is zero only next to other spoken digits; "Oh, 090..." is an interjection
            nxt, prev = neighbour(i, 1), neighbour(i, -1)
            spoken = nxt in ("w", "oh", "tens", "mul") or prev in ("w", "oh", "tens", "d", "mul")
            # "oh-90-1234" reads as zero, "Oh, 090-…" as a sigh: Whisper puts a comma after the sigh
            comma_after = (
                i + 1 < len(items) and items[i + 1][0] == "s" and any(c in items[i + 1][1] for c in ",、.。")
            )
            kind = "w" if spoken or (nxt == "d" and not comma_after) else "b"
        elif kind == "weak":
            ok = raw_neighbour(i, -1) in ("s", "edge") and raw_neighbour(i, 1) in ("s", "edge")
            kind = "w" if ok else "b"
        if kind == "tens":
            # "thirty four" is 34, but "thirty, four" is 3 0 4
            joined = i + 2 < len(items) and items[i + 1][0] == "s" and items[i + 1][1].strip(" -") == ""
            if joined and items[i + 2][0] == "w" and len(items[i + 2][1]) == 1 and items[i + 2][1] != "0":
                val, i = val + items[i + 2][1], i + 2
            else:
                val += "0"
            kind = "w"
        if kind in ("d", "w"):
            if mult > 1:
                val = val[0] * mult + val[1:]
                mult = 1
            cur.append(val)
        elif kind == "mul":
            mult = int(val)
        elif kind == "b":
            if cur:
                runs.append("".join(cur))
            cur, mult = [], 1
        i += 1
    if cur:
        runs.append("".join(cur))
    return runs


def _find_phone(text: str, min_digits: int) -> str | None:
    norm = normalize(text)
    if not norm:
        return None
    runs = _phone_runs(norm)
    if not runs:
        return None
    best = max(runs, key=len)  # max() keeps the first of equals: the number usually comes first
    return best if len(best) >= min_digits else None


def parse_phone(text: str) -> str | None:
    return _find_phone(text, 6)


def repair_phone(digits: str) -> str:
    """Whisper writes a spoken "090-1234-5678" as "090012345678" (the pause after 090 heard as a
    zero): a 12-digit number of that shape is the 11-digit one. The read-back confirms it."""
    if len(digits) == 12 and digits[3] == "0" and digits[:3] in _ELEVEN_DIGIT_PREFIXES:
        fixed = digits[:3] + digits[4:]
        if is_valid_phone(fixed):
            return fixed
    return digits


_ELEVEN_DIGIT_PREFIXES = ("020", "050", "060", "070", "080", "090")


def is_valid_phone(digits: str) -> bool:
    """A Japanese number: 10 digits (landline, 0120, 0570), or 11 for mobile and IP phones (0X0)
    and 0800. A 10-digit 090 number has lost a digit, so it is not valid."""
    if not isinstance(digits, str) or not digits.isascii() or not digits.isdigit():
        return False
    if not digits.startswith("0") or digits.startswith("00"):
        return False
    if len(digits) == 10:
        return digits[:3] not in _ELEVEN_DIGIT_PREFIXES
    return len(digits) == 11 and (digits[:3] in _ELEVEN_DIGIT_PREFIXES or digits.startswith("0800"))




def caller_number(raw: str | None) -> str | None:
    """The caller's own number from the phone network ("+819012345678", "0312345678") as a Japanese
    number in digits, or None when it is withheld ("anonymous", "+266696687"), foreign or malformed."""
    if not isinstance(raw, str):
        return None
    t = normalize(raw)[:32]
    digits = "".join(c for c in t if c.isdigit())
    if t.startswith("+"):
        if not digits.startswith("81"):
            return None
        digits = "0" + digits[2:].lstrip("0")
    return digits if is_valid_phone(digits) else None
