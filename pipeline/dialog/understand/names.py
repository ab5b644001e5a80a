"""Names: with a trigger (名前は…, my name is…) or as a bare answer; what is never a name."""

from __future__ import annotations

import datetime as dt
import logging
import re

from pipeline.dialog.understand.answers import _NOTE_KEYWORDS_RE, is_no_request, parse_yes_no
from pipeline.dialog.understand.dates import _EN_WD, _date_cands
from pipeline.dialog.understand.party import _party_cands
from pipeline.dialog.understand.phone import _decompose_kana, _hira_to_kata
from pipeline.dialog.understand.text import _JA_CHAR_RE, _KANJI_NUM_RE, _MONTHS, _prep, normalize
from pipeline.dialog.understand.times import _time_cands

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- names

_LATIN_LETTERS = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_NAME_CHARS = f"\u3005\u3006\u4e00-\u9fff\u30a1-\u30faー・\u3041-\u3096{_LATIN_LETTERS}'\\-"
_JA_NAME_OK_RE = re.compile(rf"[{_NAME_CHARS}]+(?: [{_NAME_CHARS}]+)?")
_HONORIFIC_RE = re.compile(r"\s*(?:様|さま|さん|くん|君|ちゃん|殿|氏)$")
_JA_NAME_STOP = {
    "それ",
    "これ",
    "あれ",
    "そちら",
    "こちら",
    "どちら",
    "それで",
    "何",
    "なに",
    "はい",
    "いいえ",
    "ええ",
    "うん",
    "そう",
    "そうそう",
    "大丈夫",
    "以上",
    "結構",
    "了解",
    "予約",
    "明日",
    "今日",
    "明後日",
    "本日",
    "今夜",
    "今晩",
    "来週",
    "今週",
    "週末",
    "平日",
    "夜",
    "朝",
    "昼",
    "夕方",
    "午前",
    "午後",
    "未定",
    "本当",
    "確認",
    "変更",
    "予定",
    "自分",
    "私",
    "わたし",
    "わたくし",
    "僕",
    "ぼく",
    "俺",
    "家族",
    "友達",
    "友人",
    "全員",
    "大人",
    "子供",
    "子ども",
    "会社",
    "仕事",
    "本人",
    "同じ",
    "一緒",
    "初めて",
    "禁煙",
    "喫煙",
    "個室",
    "窓際",
    "誕生日",
    "記念日",
    "問題",
    "無理",
    "なし",
    "ない",
    "特に",
    "特になし",
    "違います",
    "ちがいます",
    "間違い",
    "電話",
    "番号",
    "名前",
    "お名前",
    "ランチ",
    "ディナー",
    "コース",
    "キャンセル",
    "オッケー",
    "ありがとう",
    "すみません",
    "もしもし",
    "こんにちは",
    "こんばんは",
    "お願い",
    "お願いします",
    "分かりました",
    "わかりました",
    "承知",
    "失礼",
    "テスト",
    "OK",
    "ok",
    "お疲れ様",
    "よろしく",
    "どうも",
    "あの",
    "えっと",
    "えーと",
    "そうです",
    "はいはい",
    "いや",
    "だめ",
    "ダメ",
    "多分",
    "たぶん",
    "全部",
    "以上です",
    "満席",
    "空席",
    "席",
    "店",
    "お店",
    "電話番号",
    "今",
    "今から",
    "すぐ",
    "まだ",
    "また",
    "あと",
    "後で",
    "ちょっと",
    "少々",
    "待って",
    "はじめまして",
    "予約者",
    "本人です",
    "代表",
    "担当",
    "ひとり",
    "ふたり",
    "一人",
    "二人",
    "大丈夫です",
    "問題ない",
    "ありません",
}
_JA_NAME_STOP_SUBSTR = (
    "予約",
    "お願い",
    "大丈夫",
    "曜日",
    "電話",
    "番号",
    "ありがと",
    "すみません",
    "もしもし",
    "以上",
    "ランチ",
    "ディナー",
    "タイム",
    "コース",
    "メニュー",
    "テーブル",
    "キャンセル",
    "時間",
    "人数",
)
_HIRA_VERBISH_END_RE = re.compile(
    r"(?:ます|です|ない|たい|した|って|ください|よね|かな|でしょう|ません|ました|だよ|だね)$"
)
_HIRA_ONLY_RE = re.compile(r"[\u3041-\u3096ー]+")
_HAS_NAME_SCRIPT_RE = re.compile(r"[\u3005\u4e00-\u9fff\u30a1-\u30faA-Za-z]")

_EN_NAME_STOP = {
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "is",
    "it",
    "its",
    "it's",
    "i",
    "i'm",
    "me",
    "my",
    "we",
    "our",
    "you",
    "your",
    "he",
    "she",
    "they",
    "this",
    "that",
    "there",
    "here",
    "calling",
    "call",
    "speaking",
    "from",
    "with",
    "for",
    "at",
    "on",
    "in",
    "of",
    "to",
    "about",
    "just",
    "only",
    "yes",
    "yeah",
    "yep",
    "no",
    "nope",
    "not",
    "ok",
    "okay",
    "sure",
    "please",
    "thanks",
    "thank",
    "hello",
    "hi",
    "hey",
    "sorry",
    "um",
    "uh",
    "er",
    "erm",
    "well",
    "so",
    "reservation",
    "booking",
    "table",
    "party",
    "people",
    "person",
    "tomorrow",
    "today",
    "tonight",
    "morning",
    "evening",
    "afternoon",
    "night",
    "noon",
    "pm",
    "am",
    "fine",
    "good",
    "great",
    "correct",
    "right",
    "wrong",
    "alright",
    "under",
    "name",
    "number",
    "phone",
    "looking",
    "trying",
    "wondering",
    "going",
    "interested",
    "actually",
    "available",
    "free",
    "busy",
    "done",
    "all",
    "also",
    "still",
    "afraid",
    "happy",
    "glad",
    "what",
    "who",
    "why",
    "how",
    "when",
    "where",
    "which",
    "can",
    "could",
    "would",
    "will",
    "should",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "be",
    "been",
    "being",
    "was",
    "were",
    "are",
    "like",
    "want",
    "need",
    "book",
    "make",
    "change",
    "cancel",
    "perfect",
    "exactly",
    "nothing",
    "none",
    "nobody",
    "someone",
    "something",
    "anything",
    "everything",
    "again",
    "later",
    "now",
    "then",
    "birthday",
    "anniversary",
    "allergy",
    "window",
    "seat",
    "seats",
    "dinner",
    "lunch",
    "o'clock",
    "oh",
    "hmm",
    "mine",
    "correction",
    "same",
    "that's",
    "thats",
    "we're",
    "i'd",
    "i'll",
    "let",
    "let's",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "restaurant",
    "friend",
    "wife",
    "husband",
    "family",
    "yourself",
    "myself",
    "absolutely",
    "definitely",
    "course",
    "fine.",
    "good.",
    *_EN_WD,
    *_MONTHS,
}
_EN_TITLES = {"mr", "mrs", "ms", "miss", "dr", "mr.", "mrs.", "ms.", "dr."}
_EN_NAME_WORD_RE = re.compile(rf"[{_LATIN_LETTERS}][{_LATIN_LETTERS}'\-.]*")

_EN_STRONG_TRIGGER_RE = re.compile(
    r"\b(?:my name(?:'s| is)|the name(?:'s| is| will be| would be)|name(?:'s| is)|call me|in the name of"
    r"|under (?:the name(?: of)?\s+)?|(?:reservation|booking|table) (?:under|for)(?: the name(?: of)?)?|put it under)\s*[:,]?\s*",
    re.I,
)
_EN_WEAK_TRIGGER_RE = re.compile(r"\b(?:this is|it's|it is|i'm|i am)\s+", re.I)
_EN_SPEAKING_RE = re.compile(r"\b([A-Z][a-z'\-]+(?:\s+[A-Z][a-z'\-]+)?)\s+(?:speaking|here)\b")

_JA_PREFIX_TRIGGER_RE = re.compile(r"(?:お?名前|名義|予約名|予約者名)\s*(?:は|が|:)\s*")
_JA_SUFFIX_TRIGGER_RE = re.compile(
    r"\s*(?:様|さま|さん)?\s*(?:と申します|と申す|と申しま|といいます|と言います|っていいます|って言います|の名前で|名義で|で予約|の名義で)"
)
_JA_END_RE = re.compile(
    r"\s*(?:様|さま|さん)?\s*(?:です|でございます|と申します|といいます|と言います|でお願いします|でお願い|で予約|で|だ|になります)?\s*[。.!！、,]*$"
)
_JA_LEAD_RE = re.compile(
    r"^(?:(?:はい|ええ|えっと|えーと|ええと|あの|あのー|えー|うん|もしもし|私|わたし|わたくし|僕|ぼく|俺)(?:は|が)?[、,。\s]*)+"
)
_EN_LEAD_RE = re.compile(
    r"^(?:(?:yes|yeah|yep|sure|okay|ok|um|uh|er|well|so|oh|hi|hello|it's|it is|that's|that is|the name is|my name is|name is)[,.\s]*)+",
    re.I,
)
_EN_END_RE = re.compile(r"[\s,.!?]*(?:please|thanks|thank you)?[\s,.!?]*$", re.I)


_KATA_ONLY_RE = re.compile(r"[\u30a1-\u30faー]+")
_STARTS_HIRA_HAS_KANJI_RE = re.compile(r"^[\u3041-\u3096].*[\u3005\u4e00-\u9fff]")
_ONE_KANJI_OKURIGANA_RE = re.compile(r"^[\u3005\u4e00-\u9fff][\u3041-\u3096]+$")


def _is_spoken_digits(x: str, minimum: int = 3) -> bool:
    """"ゴーロクナナハチ": a phone number read out in katakana, not a name."""
    kata = _hira_to_kata(x.replace("・", ""))
    digits = _decompose_kana(kata) if _KATA_ONLY_RE.fullmatch(kata) else None
    return digits is not None and len(digits) >= minimum


def _looks_like_ja_name(x: str, strict: bool) -> bool:
    x = x.strip()
    if not x or len(x) > 12 or any(c.isdigit() for c in x) or not _JA_NAME_OK_RE.fullmatch(x):
        return False
    if _is_spoken_digits(x) or _STARTS_HIRA_HAS_KANJI_RE.search(x):
        return False
    if _KANJI_NUM_RE.fullmatch(x):  # "三です" answers "何名様ですか"
        return False
    if x in _JA_NAME_STOP or x.lower() in _JA_NAME_STOP or any(s in x for s in _JA_NAME_STOP_SUBSTR):
        return False
    if _NOTE_KEYWORDS_RE.search(x.lower()):
        return False
    if _HIRA_ONLY_RE.fullmatch(x):
        # hiragana-only names exist (さくら) but so do most short answers: only where a name was asked for
        return not strict and 2 <= len(x) <= 6 and not _HIRA_VERBISH_END_RE.search(x)
    if _HIRA_VERBISH_END_RE.search(x):
        return False
    prepped = _prep(x)
    today = dt.date(2000, 1, 1)
    if _date_cands(prepped, today) or _time_cands(prepped, None) or _party_cands(prepped):
        return False
    return bool(_HAS_NAME_SCRIPT_RE.search(x))


def _strip_honorific(x: str) -> str:
    return _HONORIFIC_RE.sub("", x.strip()).strip()


def _en_name_after(rest: str, need_capital: bool) -> str | None:
    words = []
    for w in rest.split():
        core = w.strip(',.!?;:"')
        if not _EN_NAME_WORD_RE.fullmatch(core):
            break
        low = core.lower()
        if not words and low in _EN_TITLES:
            if w.endswith(","):
                break
            continue
        if low.rstrip(".") in _EN_NAME_STOP or low in _EN_NAME_STOP:
            break
        if need_capital and not core[0].isupper():
            break
        words.append(core.rstrip("."))
        if len(words) == 3 or w[-1] in ",.!?;:":
            break
    return " ".join(words) or None


_TOPIC_PREFIX_RE = re.compile(r"^.*(?:は|が)(?=[\u3005\u4e00-\u9fff\u30a1-\u30fa])")


def _ja_name_before(t: str, end: int) -> str | None:
    head = t[max(0, end - 100) : end]
    piece = re.split(r"[、。,.!?！？\s]", head)[-1] if head else ""
    piece = _JA_LEAD_RE.sub("", piece)
    # "予約者は田中と申します": the name starts after the topic particle
    piece = _TOPIC_PREFIX_RE.sub("", piece)
    name = _strip_honorific(piece)
    # two-part names said with a space: "山田 花子と申します"
    parts = [p for p in re.split(r"[、。,.!?！？]", head)[-1].strip().split(" ") if p]
    if len(parts) == 2 and _strip_honorific(parts[1]) == name:
        both = _strip_honorific(_JA_LEAD_RE.sub("", parts[0]) + " " + parts[1])
        if _looks_like_ja_name(both, strict=False):
            return both
    return name or None


_COMMA_BEFORE_COPULA_RE = re.compile(r"[、,]\s*(?=(?:様|さま|さん)?\s*(?:です|でございます|と申します|といいます|と言います|でお願いします)[。.!！]*$)")


def _parse_name(text: str, bare: bool) -> str | None:
    t = _COMMA_BEFORE_COPULA_RE.sub("", normalize(text))
    if not t:
        return None
    # English, with an explicit trigger
    for m in _EN_STRONG_TRIGGER_RE.finditer(t):
        name = _en_name_after(t[m.end() : m.end() + 200], need_capital=False)
        if name:
            return name
    for m in _EN_SPEAKING_RE.finditer(t):
        name = _en_name_after(m.group(1), need_capital=True)
        if name:
            return name
    for m in _EN_WEAK_TRIGGER_RE.finditer(t):
        name = _en_name_after(t[m.end() : m.end() + 200], need_capital=True)
        if name:
            return name
    # Japanese, with an explicit trigger
    for m in _JA_PREFIX_TRIGGER_RE.finditer(t):
        rest = t[m.end() :]
        cut = re.split(
            r"[、。,.!?！？]|です|でございます|と申|といい|と言い|でお願い|で予約|になります|で(?=[\s、。,.]|$)",
            rest,
            maxsplit=1,
        )[0]
        name = _strip_honorific(cut)
        if _looks_like_ja_name(name, strict=False):
            return name
    for m in _JA_SUFFIX_TRIGGER_RE.finditer(t):
        if m.start() == 0:
            continue
        name = _ja_name_before(t, m.start())
        if name and _looks_like_ja_name(name, strict=False):
            return name
    # "田中です": the whole utterance, or its last clause ("明日の19時に3名で、田中です"), is a name and a copula
    body = _JA_LEAD_RE.sub("", t)
    last_clause = _JA_LEAD_RE.sub("", re.split(r"[、。,!?！？]\s*(?=\S)", body)[-1])
    m = re.fullmatch(r"(.+?)\s*(?:様|さま|さん)?\s*(?:です|でございます)\s*[。.!！]*", last_clause)
    if m:
        name = _strip_honorific(m.group(1))
        if _looks_like_ja_name(name, strict=not bare):
            return name
    if not bare:
        return None
    # a bare answer to "お名前は?": "田中", "田中でお願いします", "Smith", "John Smith, please"
    if _JA_CHAR_RE.search(t):
        body = _JA_END_RE.sub("", body)
        name = _strip_honorific(body)
        return name if _looks_like_ja_name(name, strict=False) else None
    body = _EN_END_RE.sub("", _EN_LEAD_RE.sub("", t))
    words = body.split()
    if not 1 <= len(words) <= 4:
        return None
    name = _en_name_after(body, need_capital=False)
    if name and len(name.split()) == len([w for w in words if w.lower().rstrip(".") not in _EN_TITLES]):
        return name
    return None


def parse_name(text: str) -> str | None:
    return _parse_name(text, bare=False)


def name_is_plausible(name: str) -> bool:
    """A name Whisper is unlikely to have made up from other words: kanji, katakana or Latin letters
    as names are written, or hiragana that reads as a common surname. Other hiragana-only names and one
    kanji with verb endings (「読みん」) are often mishearings, so the dialog checks them with the caller
    first."""
    x = name.replace(" ", "")
    if _HIRA_ONLY_RE.fullmatch(x):
        # 「かとう」 reads as a common surname (加藤): whisper wrote a name in kana, it did not make one up
        from pipeline.dialog.understand.sound import common_surname

        return common_surname(x) is not None
    return not _ONE_KANJI_OKURIGANA_RE.fullmatch(x)


# "S-M-I-T-H", "s m i t h", "Smith, S. M. I. T. H.": a name spelled letter by letter
_SPELLED_RE = re.compile(r"(?<![A-Za-z])((?:[A-Za-z][\s.\-,]+){1,19}[A-Za-z])(?![A-Za-z])")


def _spelled(text: str) -> str | None:
    runs = [m.group(1) for m in _SPELLED_RE.finditer(normalize(text))]
    letters = [re.sub(r"[^A-Za-z]", "", r) for r in runs]
    letters = [x for x in letters if len(x) >= 2]
    if not letters:
        return None
    return " ".join(x.capitalize() for x in letters)


def parse_name_answer(text: str) -> str | None:
    spelled = _spelled(text)
    if spelled is not None:
        return spelled
    name = _parse_name(text, bare=True)
    # "はい" / "Sure" / "お願いします" answer the question, they are not a name
    if name is None or parse_yes_no(name) is not None or is_no_request(name):
        return None
    return name


