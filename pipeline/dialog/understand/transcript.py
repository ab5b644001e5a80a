"""Whisper's transcript made fit for understanding: what whisper invents on silence dropped, its
loops collapsed, digits it writes oddly in Japanese made digits.

Whisper was trained on subtitled video: on silence, breath or line noise it writes the end of a
video (「ご視聴ありがとうございました」, 「チャンネル登録よろしくお願いします」, "Thank you for watching"),
a subtitle credit (「字幕作成: …」) or a sound label ([音楽], (拍手)); on a short window it can go round
in circles (「はい。はい。はい。」). None of that is a caller's answer, and a parser that reads it
may take a name or a "yes" from it. :func:`clean_transcript` removes it; the call keeps the raw
text beside the clean one in its log.

Phone numbers are left to the parsers, which already read separators, kana and kanji digits, and
Whisper's 「090012345678」 (``pipeline.dialog.parse.repair_phone``); here only a digit run that
mixes kanji digits with ASCII ones (「0九0」, 「12月二4日」) is made ASCII, since the finders take a
run of either kind but not the two mixed.
"""

from __future__ import annotations

import re
import unicodedata

from pipeline.dialog.understand.phone import _decompose_kana

#: a sentence that is nothing but one of these is an invention of whisper's, wherever it stands
_NEVER_SAID = re.compile(
    r"ご視聴|ご清聴ありがとう|チャンネル登録|高評価|字幕|次回も(?:お楽しみに|よろしく)|最後までご覧"
    r"|thank(?:s| you) for watching|please subscribe|like and subscribe|subtitles? by|captions? by"
    r"|amara\.org|see you (?:in the )?next (?:time|video)",
    re.IGNORECASE,
)
#: invented on silence too, but a caller may say them: dropped only as the whole transcript
_ALONE_NOT_AN_ANSWER = frozenset(
    s.casefold() for s in ("おやすみなさい", "おやすみ", "you")
)
#: a sound label in brackets: [音楽], (拍手), 【字幕】, ♪…♪; never words the caller said (but
#: 「03(1234)5678」 is a phone number)
_LABEL = re.compile(r"[\[【(（][^\]】)）0-9０-９]{0,20}[\]】)）]|[♪♫]+")
#: a sentence: up to Japanese or English end marks (a dot only before a space or the end, so that
#: 7.30 and 「5.6時」 stay whole) and the spaces after them
_SENTENCE = re.compile(r"(?:[^。．!！?？.]|\.(?!\s|$))+(?:[。．!！?？]+|\.)?\s*")
#: a clause inside a sentence, for repeated clauses
_CLAUSE = re.compile(r"[^、,，。．!！?？\s]+[、,，。．!！?？\s]*")
_DIGIT_RUN = re.compile(r"[0-9０-９〇一二三四五六七八九]+")
_KANJI_DIGITS = {c: str(i) for i, c in enumerate("〇一二三四五六七八九")}
#: a phrase of 2 to 12 characters said 3 times or more without a break: 「お願いしますお願いしますお願いします」
_LOOP = re.compile(r"(.{2,12}?)\1{2,}")
_SPACE = re.compile(r"\s+")
#: polite formulas whisper misspells on a phone line (measured on whisper base): written as said,
#: so that 「高橋でお願いいします」 reads as a name given and 「4人でおめがいします」 as a request
_FORMULAS = ((re.compile("お(?:願|ねが|めが)いいします|おめがいします"), "お願いします"),)
_KATAKANA_RUN = re.compile("[\u30a1-\u30faー]+")


def clean_transcript(text: str, language: str | None = None) -> str:
    """``text`` as the understanding layer should read it: ``""`` when whisper heard nothing a
    caller would say. ``language`` ("ja", "en", or None) is the transcript's; the phrases dropped
    are whisper's in either language, since it may write English on a Japanese call's silence."""
    if not isinstance(text, str):
        return ""
    t = _SPACE.sub(" ", _LABEL.sub(" ", text)).strip()
    sentences = [s for s in _pieces(t, _SENTENCE) if not _NEVER_SAID.search(s)]
    t = "".join(_collapse_loops(s) for s in _drop_repeats(sentences))
    t = _mixed_digit_runs(t).strip()
    for pattern, written in _FORMULAS:
        t = pattern.sub(written, t)
    if not any(_is_word_char(c) for c in t) or _bare(t) in _ALONE_NOT_AN_ANSWER:
        return ""
    return t


def _pieces(t: str, piece: re.Pattern[str]) -> list[str]:
    """``t`` cut into pieces (sentences, clauses), each with its punctuation and spaces."""
    return [m.group(0) for m in piece.finditer(t)]


def _bare(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", s) if _is_word_char(c)).casefold()


def _is_word_char(c: str) -> bool:
    return unicodedata.category(c)[0] in "LN"


def _drop_repeats(sentences: list[str]) -> list[str]:
    """A sentence said again right after itself is said once (「はい。はい。はい。」 -> 「はい。」),
    unless it holds a number: a caller may well read a group of digits twice."""
    out: list[str] = []
    for s in sentences:
        if out and _bare(s) == _bare(out[-1]) and not _has_number(s):
            out[-1] = s  # the same words; the last one's punctuation ends the text
        else:
            out.append(s)
    return out


def _collapse_loops(sentence: str) -> str:
    """Clauses repeated back to back, and a phrase looped 3 times or more, said once; numbers and
    katakana (digit readings: 「ゴーゴーゴー」 is 555) are left alone."""
    kept: list[str] = []
    for c in _pieces(sentence, _CLAUSE):
        if kept and _bare(c) and _bare(c) == _bare(kept[-1]) and not _has_number(c):
            kept[-1] = c
        else:
            kept.append(c)
    s = "".join(kept)

    def once(m: re.Match[str]) -> str:
        phrase = m.group(1)
        if _has_number(phrase):
            return m.group(0)
        return phrase

    return _LOOP.sub(once, s)


def _has_number(s: str) -> bool:
    """Digits, or katakana that reads as digits (「ゴーゴー」, 「ゼロキューゼロ」)."""
    if _DIGIT_RUN.search(s):
        return True
    return any(_decompose_kana(run) for run in _KATAKANA_RUN.findall(s))


def _mixed_digit_runs(t: str) -> str:
    """Kanji digits in a run that also has ASCII (or full-width) digits become ASCII digits."""

    def fix(m: re.Match[str]) -> str:
        run = m.group(0)
        if any(c in _KANJI_DIGITS for c in run) and any(c not in _KANJI_DIGITS for c in run):
            return "".join(_KANJI_DIGITS.get(c, c) for c in run)
        return run

    return _DIGIT_RUN.sub(fix, t)
